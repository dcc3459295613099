"""Classification metrics from scikit-learn (`evaluate` would fetch its metrics from the hub).

SCORES is the one definition of the single-number metrics: metrics.json, the history columns
(`valid_<name>`), the line printed after each evaluation, TensorBoard and the `--best_metric`
choices all come from it. Adding a metric is one entry here."""
from dataclasses import dataclass
from typing import Callable

import numpy as np

from scoring.calibration import expected_calibration_error
from scoring.scores import at_threshold, log_softmax, sigmoid


def sk():
    """sklearn.metrics, imported when first used: importing it (scipy, pandas) costs about a second, which
    --help and a run stopped by a bad flag or file need not pay (docs/benchmarks.md, "Figures behind the code")."""
    import sklearn.metrics
    return sklearn.metrics


@dataclass(frozen=True)
class Score:
    title: str  # as printed after each evaluation
    compute: Callable  # (gold ids, predicted ids, logits, class ids) -> float
    higher_is_better: bool = True


def example_losses(logits, labels):
    """Cross-entropy of each example: how surprised the model is by the gold label."""
    return -log_softmax(logits)[np.arange(len(labels)), np.asarray(labels)]


SCORES = {
    "loss": Score("loss", lambda gold, predicted, logits, ids: example_losses(logits, gold).mean(),
                  higher_is_better=False),
    "accuracy": Score("accuracy", lambda gold, predicted, logits, ids: sk().accuracy_score(gold, predicted)),
    "macro_f1": Score("macro-F1", lambda gold, predicted, logits, ids: sk().f1_score(
        gold, predicted, labels=ids, average="macro", zero_division=0)),
    "weighted_f1": Score("weighted-F1", lambda gold, predicted, logits, ids: sk().f1_score(
        gold, predicted, labels=ids, average="weighted", zero_division=0)),
    "mcc": Score("MCC", lambda gold, predicted, logits, ids: sk().matthews_corrcoef(gold, predicted)),
    # whether the printed probabilities mean what they say (scoring/calibration.py): lower is better
    "ece": Score("ECE", lambda gold, predicted, logits, ids: expected_calibration_error(logits, gold, False),
                 higher_is_better=False),
}


def binary_losses(logits, targets):
    """Binary cross-entropy of each example, averaged over its labels (multi-label)."""
    x = np.asarray(logits, dtype=np.float64)
    return (np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))).mean(axis=1)


def macro_roc_auc(gold, logits):
    """Mean ROC-AUC over the labels that have both positive and negative examples here."""
    scores = [sk().roc_auc_score(gold[:, j], logits[:, j]) for j in range(gold.shape[1]) if 0 < gold[:, j].sum() < len(gold)]
    return float(np.mean(scores)) if scores else float("nan")


# Multi-label scores: gold and predicted are 0/1 matrices (examples x labels); "accuracy" is subset
# accuracy (the whole label set right), so learning curves and --best_metric read the same names.
MULTI_LABEL_SCORES = {
    "loss": Score("loss", lambda gold, predicted, logits, ids: binary_losses(logits, gold).mean(),
                  higher_is_better=False),
    "accuracy": Score("subset accuracy", lambda gold, predicted, logits, ids: sk().accuracy_score(gold, predicted)),
    "micro_f1": Score("micro-F1", lambda gold, predicted, logits, ids: sk().f1_score(
        gold, predicted, average="micro", zero_division=0)),
    "macro_f1": Score("macro-F1", lambda gold, predicted, logits, ids: sk().f1_score(
        gold, predicted, average="macro", zero_division=0)),
    "weighted_f1": Score("weighted-F1", lambda gold, predicted, logits, ids: sk().f1_score(
        gold, predicted, average="weighted", zero_division=0)),
    "roc_auc": Score("macro ROC-AUC", lambda gold, predicted, logits, ids: macro_roc_auc(gold, logits)),
    "ece": Score("ECE", lambda gold, predicted, logits, ids: expected_calibration_error(logits, gold, True),
                 higher_is_better=False),
}
# Regression scores (--regression): gold and predicted are numbers in the label's units; the loss is the mean
# squared error on the standardised targets, the quantity training minimises (comparable to the train loss).
REGRESSION_SCORES = {
    "loss": Score("loss", lambda gold, predicted, std: float(np.mean(((predicted - gold) / std) ** 2)),
                  higher_is_better=False),
    "pearson": Score("Pearson", lambda gold, predicted, std: correlation(gold, predicted, "pearson")),
    "spearman": Score("Spearman", lambda gold, predicted, std: correlation(gold, predicted, "spearman")),
    "mse": Score("MSE", lambda gold, predicted, std: float(np.mean((predicted - gold) ** 2)), higher_is_better=False),
    "mae": Score("MAE", lambda gold, predicted, std: float(np.mean(np.abs(predicted - gold))), higher_is_better=False),
}
DEFAULT_BEST_METRIC = "macro_f1"
ALL_SCORES = {**SCORES, **{name: score for name, score in MULTI_LABEL_SCORES.items() if name not in SCORES},
              **{name: score for name, score in REGRESSION_SCORES.items() if name not in SCORES}}
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)  # the decision thresholds tried on validation


def scores_of(metrics):
    if metrics.get("regression"):
        return REGRESSION_SCORES
    return MULTI_LABEL_SCORES if metrics.get("multi_label") else SCORES


def correlation(gold, predicted, kind):
    """Pearson or Spearman correlation; NaN when either side is constant (undefined)."""
    from scipy import stats
    gold, predicted = np.asarray(gold, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if len(gold) < 2 or np.ptp(gold) == 0 or np.ptp(predicted) == 0:
        return float("nan")
    return float((stats.pearsonr if kind == "pearson" else stats.spearmanr)(gold, predicted)[0])


def regression_predictions(logits, scale=None):
    """The model's numbers in the label's units: its one output, times the targets' standard deviation plus
    their mean (scale (mean, std); None: the output is in the label's units already, as in a saved model)."""
    values = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)[:, 0]
    return values if scale is None else values * scale[1] + scale[0]


def regression_metrics(logits, gold, scale=None, target_std=None):
    """Every score in REGRESSION_SCORES, of the model outputs `logits` (see regression_predictions); the loss
    is on targets standardised by the training targets' deviation (scale's, else target_std, else 1)."""
    predicted = regression_predictions(logits, scale)
    gold = np.asarray(gold, dtype=np.float64)
    std = scale[1] if scale is not None else target_std or 1.0
    return {**{name: float(score.compute(gold, predicted, std)) for name, score in REGRESSION_SCORES.items()},
            "regression": True, "n_examples": int(len(gold))}


def tune_threshold(logits, gold, per_label=False):
    """The decision threshold with the best macro-F1 on these examples: one for every label, or with
    `per_label` a list of one per label, each with the best F1 of its label (a label that no threshold
    gets right here, e.g. one without examples, takes the one for every label). A tie goes to the one
    nearest 0.5."""
    probabilities = sigmoid(logits)
    overall = nearest_half_of_best([sk().f1_score(gold, at_threshold(probabilities, t).astype(int), average="macro",
                                                   zero_division=0)
                                    for t in THRESHOLDS])
    if not per_label:
        return overall
    thresholds = []
    for j in range(gold.shape[1]):
        scores = [sk().f1_score(gold[:, j], at_threshold(probabilities[:, j], t).astype(int), zero_division=0) for t in THRESHOLDS]
        thresholds.append(nearest_half_of_best(scores) if max(scores) > 0 else overall)
    return thresholds


def nearest_half_of_best(scores):
    """The threshold (of THRESHOLDS, in order with `scores`) scoring best, the one nearest 0.5 on a tie."""
    best = max(scores)
    return float(min((t for t, score in zip(THRESHOLDS, scores) if score == best), key=lambda t: abs(t - 0.5)))


def multi_label_metrics(logits, gold, label_names, threshold=None, per_label=False):
    """Every score in MULTI_LABEL_SCORES and the per-label report, at `threshold` (a number, or a list of one
    per label; None: tuned here, one per label with `per_label`)."""
    logits = np.asarray(logits)
    gold = np.asarray(gold).astype(int)
    if threshold is None:
        threshold = tune_threshold(logits, gold, per_label)
    threshold = [float(t) for t in threshold] if isinstance(threshold, (list, tuple, np.ndarray)) else float(threshold)
    predicted = at_threshold(sigmoid(logits), threshold).astype(int)
    precision, recall, f1, support = sk().precision_recall_fscore_support(gold, predicted, zero_division=0)
    return {
        **{name: float(score.compute(gold, predicted, logits, None)) for name, score in MULTI_LABEL_SCORES.items()},
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i]),
                             **({"threshold": threshold[i]} if isinstance(threshold, list) else {})}
                      for i, name in enumerate(label_names)},
        "threshold": threshold, "multi_label": True, "n_examples": int(len(gold)),
    }


def classification_metrics(logits, labels, label_names):
    """Every score in SCORES, the per-class report and the confusion matrix."""
    labels = np.asarray(labels)
    logits = np.asarray(logits)
    predictions = logits.argmax(axis=-1)
    ids = list(range(len(label_names)))
    precision, recall, f1, support = sk().precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0)
    return {
        **{name: float(score.compute(labels, predictions, logits, ids)) for name, score in SCORES.items()},
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(label_names)},
        "confusion_matrix": sk().confusion_matrix(labels, predictions, labels=ids).tolist(),
        "n_examples": int(len(labels)),
    }


def scalar_metrics(metrics):
    """The single-number metrics, in SCORES (or MULTI_LABEL_SCORES) order, for logs and TensorBoard."""
    return {name: metrics[name] for name in ALL_SCORES if name in metrics}


def best_metric_problem(best_metric, regression=False, multi_label=False):
    """Why --best_metric cannot choose among this kind of model's evaluations (a regression model's, a
    multi-label or a single-label classifier's), or None when it can."""
    if regression:
        wanted, kind = REGRESSION_SCORES, "not a regression score"
    elif multi_label:
        wanted, kind = MULTI_LABEL_SCORES, "not a multi-label score"
    else:
        wanted, kind = SCORES, "a multi-label score"
    if best_metric in wanted:
        return None
    return f"--best_metric {best_metric}: {kind}; choose one of {', '.join(wanted)}"


def selection_score(metrics, name):
    """The number the best evaluation is chosen by, higher is better."""
    return metrics[name] if ALL_SCORES[name].higher_is_better else -metrics[name]


def summary_line(metrics):
    """`loss 0.3121, accuracy 0.9012, macro-F1 0.8850, ...`: the line printed after an evaluation."""
    titles = scores_of(metrics)
    line = ", ".join(f"{titles[name].title} {value:.4f}" for name, value in scalar_metrics(metrics).items())
    notes = [threshold_text(metrics["threshold"])] if "threshold" in metrics else []
    if "temperature" in metrics:  # --calibrate
        notes.append(f"temperature {metrics['temperature']:.3g}, ECE before it {metrics['ece_uncalibrated']:.4f}")
    return line + (f" ({'; '.join(notes)})" if notes else "")


def threshold_text(threshold):
    """`threshold 0.35`, or `thresholds per label 0.10-0.60` for a list of them."""
    if isinstance(threshold, (list, tuple)):
        return f"thresholds per label {min(threshold):.2f}-{max(threshold):.2f}"
    return f"threshold {threshold:.2f}"


def trainer_compute_metrics(label_names, multi_label=False, threshold_per_label=False, regression_scale=None,
                            pool=None):
    """`compute_metrics` for transformers.Trainer (it wants flat numbers; it reports the loss itself).
    regression_scale: (mean, std) of the training targets for a regression model. pool: with sliding
    windows, (logits, labels) of the windows -> of the texts."""
    def compute(eval_prediction):
        if pool is not None:
            eval_prediction = pool(eval_prediction.predictions, eval_prediction.label_ids)
            from transformers import EvalPrediction
            eval_prediction = EvalPrediction(*eval_prediction)
        if regression_scale is not None:
            metrics = regression_metrics(eval_prediction.predictions, eval_prediction.label_ids, regression_scale)
            return {key: value for key, value in scalar_metrics(metrics).items() if key != "loss"}
        if multi_label:
            metrics = multi_label_metrics(eval_prediction.predictions, eval_prediction.label_ids, label_names,
                                          per_label=threshold_per_label)
            return {**{key: value for key, value in scalar_metrics(metrics).items() if key != "loss"},
                    "threshold": metrics["threshold"]}
        metrics = classification_metrics(eval_prediction.predictions, eval_prediction.label_ids, label_names)
        return {key: value for key, value in scalar_metrics(metrics).items() if key != "loss"}
    return compute
