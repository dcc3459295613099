"""The training loss, one definition for both trainers: cross-entropy over the classes, optionally
weighted per class (--class_weight) for imbalanced data."""
import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError


def class_weights(spec, labels, label_ids, n_examples=None, multi_label=False):
    """--class_weight as a float32 array in class-id order, or None for an unweighted loss.
    `label_ids` are the training examples' class ids (a NumPy array; multi-label: every label of every
    one of the n_examples). Multi-label weights are BCE's pos_weight: balanced is negatives / positives."""
    if spec in (None, "", "none"):
        return None
    if spec == "balanced":
        counts = np.bincount(label_ids, minlength=len(labels)).astype(np.float64)
        # a class missing from a --max_train_samples subset would get an infinite weight
        if multi_label:
            return ((n_examples - counts) / np.maximum(counts, 1)).clip(min=1e-3).astype(np.float32)
        return (len(label_ids) / (len(labels) * np.maximum(counts, 1))).astype(np.float32)
    parts = [part.strip() for part in spec.split(",")]
    try:
        if all("=" in part for part in parts):
            weights = np.ones(len(labels), dtype=np.float64)
            index = {label: i for i, label in enumerate(labels)}
            seen = set()
            for part in parts:
                name, value = (piece.strip() for piece in part.rsplit("=", 1))
                if name not in index:
                    raise UserError(f"--class_weight {spec}: no class {name!r} (classes: {', '.join(labels[:20])})")
                if name in seen:
                    raise UserError(f"--class_weight {spec}: class {name!r} is given twice: give each class once")
                seen.add(name)
                weights[index[name]] = float(value)
        else:
            weights = np.array([float(part) for part in parts], dtype=np.float64)
        with np.errstate(over="ignore"):  # 1e40 is out of float32's range: refused below, without NumPy's warning
            weights = weights.astype(np.float32)
    except ValueError:
        raise UserError(f"--class_weight {spec}: expected `balanced`, numbers like 1,2.5 or pairs like neg=1,pos=3"
                        ) from None
    if len(weights) != len(labels):
        raise UserError(f"--class_weight {spec}: {len(weights)} weights for {len(labels)} classes "
                        f"({', '.join(labels[:20])}): give one per class, in this order, or name them (label=weight)")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        # a 0 weight makes a batch of only that class 0/0 = NaN in the weighted mean, and NaN the model
        raise UserError(f"--class_weight {spec}: weights must be finite and above 0")
    return weights


def label_log_odds(label_ids, n_labels, n_examples, weights=None):
    """Multi-label: each label's log-odds in the training data (`label_ids` as for class_weights), where a
    constant prediction minimises the loss: with pos_weight w, log(w p / (1 - p)), which --class_weight
    balanced makes 0. A new head's biases start there (GoEmotions, 2 epochs: validation macro-F1 0.40 after
    epoch 1 from these biases, 0.12 from zero biases, whose sigmoid of 0.5 the rare labels spend epochs unlearning)."""
    frequency = np.bincount(label_ids, minlength=n_labels) / max(n_examples, 1)
    frequency = frequency.clip(1e-4, 1 - 1e-4)  # a label absent from a subset: a large negative bias, not -inf
    return np.log((1 if weights is None else weights) * frequency / (1 - frequency)).astype(np.float32)


def target_scale(targets):
    """--regression: (mean, standard deviation) of the training targets, which the loss standardises with
    (a constant target has no spread to divide by: its deviation counts as 1)."""
    targets = np.asarray(targets, dtype=np.float64)
    std = float(targets.std()) if len(targets) else 1.0
    return float(targets.mean()) if len(targets) else 0.0, std if std > 1e-8 else 1.0


def loss_function(weights=None, multi_label=False, regression_scale=None):
    """loss(logits, labels): the mean cross-entropy of a batch, each example weighted by its class's
    weight (and divided by the sum of those weights, as torch's weighted cross-entropy does); for
    multi-label 0/1 rows, the mean binary cross-entropy over every label, the positives of label j
    weighted by weights[j] (pos_weight); for regression (regression_scale: the training targets' mean and
    standard deviation) the mean squared error of the one output against the standardised target, so the
    learning rate suits any label range (STS-B's 0-5 as a 1-10 rating). Computed in fp32 also under autocast."""
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

    def loss(logits, labels):
        nonlocal weight
        if regression_scale is not None:
            mean, std = regression_scale
            return F.mse_loss(logits.float().view(-1), (labels.float().view(-1) - mean) / std)
        if weight is not None and weight.device != logits.device:
            weight = weight.to(logits.device)
        if multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)
        return F.cross_entropy(logits.float(), labels, weight=weight)
    return loss
