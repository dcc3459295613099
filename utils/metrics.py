"""Classification metrics from scikit-learn (`evaluate` would fetch its metrics from the hub).

SCORES is the one definition of the single-number metrics: metrics.json, the history columns
(`valid_<name>`), the line printed after each evaluation, TensorBoard and the `--best_metric`
choices all come from it. Adding a metric is one entry here."""
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                             precision_recall_fscore_support)


@dataclass(frozen=True)
class Score:
    title: str  # as printed after each evaluation
    compute: Callable  # (gold ids, predicted ids, logits, class ids) -> float
    higher_is_better: bool = True


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def example_losses(logits, labels):
    """Cross-entropy of each example: how surprised the model is by the gold label."""
    return -log_softmax(logits)[np.arange(len(labels)), np.asarray(labels)]


SCORES = {
    "loss": Score("loss", lambda gold, predicted, logits, ids: example_losses(logits, gold).mean(),
                  higher_is_better=False),
    "accuracy": Score("accuracy", lambda gold, predicted, logits, ids: accuracy_score(gold, predicted)),
    "macro_f1": Score("macro-F1", lambda gold, predicted, logits, ids: f1_score(
        gold, predicted, labels=ids, average="macro", zero_division=0)),
    "weighted_f1": Score("weighted-F1", lambda gold, predicted, logits, ids: f1_score(
        gold, predicted, labels=ids, average="weighted", zero_division=0)),
    "mcc": Score("MCC", lambda gold, predicted, logits, ids: matthews_corrcoef(gold, predicted)),
}


def classification_metrics(logits, labels, label_names):
    """Every score in SCORES, the per-class report and the confusion matrix."""
    labels = np.asarray(labels)
    logits = np.asarray(logits)
    predictions = logits.argmax(axis=-1)
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0)
    return {
        **{name: float(score.compute(labels, predictions, logits, ids)) for name, score in SCORES.items()},
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
        "n_examples": int(len(labels)),
    }


def scalar_metrics(metrics):
    """The single-number metrics, in SCORES order, for logs and TensorBoard."""
    return {name: metrics[name] for name in SCORES if name in metrics}


def selection_score(metrics, name):
    """The number the best evaluation is chosen by, higher is better."""
    return metrics[name] if SCORES[name].higher_is_better else -metrics[name]


def summary_line(metrics):
    """`loss 0.3121, accuracy 0.9012, macro-F1 0.8850, ...`: the line printed after an evaluation."""
    return ", ".join(f"{SCORES[name].title} {value:.4f}" for name, value in scalar_metrics(metrics).items())


def trainer_compute_metrics(label_names):
    """`compute_metrics` for transformers.Trainer (it wants flat numbers; it reports the loss itself)."""
    def compute(eval_prediction):
        metrics = classification_metrics(eval_prediction.predictions, eval_prediction.label_ids, label_names)
        return {key: value for key, value in scalar_metrics(metrics).items() if key != "loss"}
    return compute
