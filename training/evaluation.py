"""Scoring a model on a labelled dataset: the logits (sorted by length, sharded across processes) and
the metrics with what a report of the worst errors needs. The native trainer, Trainer's final
evaluation and evaluate_plm.py all end here."""
import numpy as np
import torch

from data_load import TextClassificationCollator, TextLookup, column_numpy, label_matrix, model_inputs
from data_load.dataset import window_rows
from data_load.labels import is_multi_label
from data_load.long_text import pool
from scoring.calibration import calibration_temperature, expected_calibration_error
from scoring.metrics import classification_metrics, multi_label_metrics, regression_metrics, regression_predictions
from utils.log import log
from utils.runtime import autocast_context, pad_to_multiple_of

FIT_TEMPERATURE = "fit"  # evaluation(temperature=...): fit one on these examples (--calibrate, on validation)


def predict_logits(model, dataset, collate, batch_size, device, autocast, rank=0, world_size=1, pooling="mean"):
    """{row: logits} for this process's shard of the dataset (every world_size-th row), in batches of
    similar length (less padding). With sliding windows (--long_text sliding) the windows of the shard's
    texts are batched together, mixed across texts, and their logits pooled into one row per text."""
    model = getattr(model, "module", model)  # plain forward: no DDP synchronisation for evaluation
    was_training = model.training
    model.eval()
    shard = np.arange(rank, len(dataset), world_size)
    texts = dataset if world_size == 1 else dataset.select(shard.tolist())
    inputs, text_of_window = window_rows(texts)
    order = np.argsort(column_numpy(inputs, "length"), kind="stable").tolist()
    inputs = model_inputs(inputs)
    window_logits = [None] * len(inputs)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = collate(inputs.__getitems__(indices))
            batch = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "texts")}
            with autocast:
                output = model(**batch).logits.float().cpu().numpy()
            for i, row in zip(indices, output):
                window_logits[i] = row
    model.train(was_training)
    window_logits = np.stack(window_logits) if window_logits else np.zeros((0, model.config.num_labels), np.float32)
    logits = window_logits if text_of_window is None else pool(window_logits, text_of_window, len(shard), pooling)
    return dict(zip(shard.tolist(), logits))


def all_logits(model, dataset, collate, batch_size, device, autocast, context, pooling="mean"):
    """The logits of every row of the dataset, in row order, on every process (each predicts its shard)."""
    logits = predict_logits(model, dataset, collate, batch_size, device, autocast, context.rank, context.world_size,
                            pooling)
    merged = {i: row for part in context.gather(logits) for i, row in part.items()}
    return np.stack([merged[i] for i in range(len(dataset))])


def evaluation(logits, dataset, label_names, threshold=None, threshold_per_label=False, regression_scale=None,
               regression=False, target_std=None, temperature=None):
    """Metrics plus what the report needs to list errors: logits, gold labels, texts (read when listed).
    Multi-label: gold labels are a 0/1 matrix, and the decision threshold is `threshold` (a number or one
    per label; None: the one that scores best on these examples, as on validation, or with
    `threshold_per_label` the best one for each label). Regression (`regression`, or `regression_scale`,
    the training targets' (mean, std) while the model outputs standardised numbers): gold numbers.
    temperature (classes only): the logits are divided by it before anything is scored (a model's
    --calibrate temperature), or with FIT_TEMPERATURE by the one fitted on these (validation) examples;
    the metrics then also hold the temperature and the ECE before scaling. None: the logits as they are."""
    logits = np.asarray(logits, dtype=np.float32)
    if regression or regression_scale is not None:
        labels = column_numpy(dataset, "labels").astype(np.float64)
        metrics = regression_metrics(logits, labels, regression_scale, target_std)
        logits = regression_predictions(logits, regression_scale)[:, None]  # reports show numbers in label units
        return {"metrics": metrics, "logits": logits, "labels": labels, "texts": TextLookup(dataset)}
    multi_label = is_multi_label(dataset)
    labels = label_matrix(dataset, len(label_names)) if multi_label else column_numpy(dataset, "labels")
    calibration = {}
    if temperature == FIT_TEMPERATURE:  # before the threshold is tuned: it is tuned on what the model will print
        temperature, why_not = calibration_temperature(logits, labels, multi_label)
        if temperature is None:
            log.warning(f"--calibrate: no temperature fitted: {why_not}; the model's probabilities are left as they "
                        "are. Validate on more examples, of every class (--valid_fn, or a larger --valid_ratio)")
    if temperature is not None:
        calibration = {"temperature": temperature,
                       "ece_uncalibrated": expected_calibration_error(logits, labels, multi_label)}
        logits = (logits / np.float32(temperature)).astype(np.float32)
    if multi_label:
        metrics = multi_label_metrics(logits, labels, label_names, threshold, threshold_per_label)
    else:
        metrics = classification_metrics(logits, labels, label_names)
    return {"metrics": {**metrics, **calibration}, "logits": logits, "labels": labels, "texts": TextLookup(dataset)}


def evaluate_saved(model, tokenizer, saved, dataset, batch_size, device, precision, threshold=None, pooling=None):
    """A saved model (checkpoint.saved_model.load_checkpoint) scored on an encoded dataset: a multi-label model
    at `threshold` (default: the one it was saved with), sliding windows pooled by `pooling` (default: as
    trained), the logits divided by its temperature (--calibrate). evaluate_plm.py and the end of a
    hyperparameter search score models this way."""
    collate = TextClassificationCollator(tokenizer, pad_to_multiple_of=pad_to_multiple_of(precision),
                                         num_labels=len(saved.labels))
    logits = predict_logits(model, dataset, collate, batch_size, device, autocast_context(device, precision),
                            pooling=pooling or saved.window_pooling)
    if threshold is None:
        threshold = saved.threshold
    return evaluation([logits[i] for i in range(len(dataset))], dataset, list(saved.labels),
                      threshold if saved.multi_label else None, regression=saved.regression,
                      target_std=saved.target_scale and saved.target_scale[1],
                      temperature=saved.calibration)
