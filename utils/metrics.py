"""Classification metrics from scikit-learn (`evaluate` would fetch its metrics from the hub)."""
import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                             precision_recall_fscore_support)


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def example_losses(logits, labels):
    """Cross-entropy of each example: how surprised the model is by the gold label."""
    return -log_softmax(logits)[np.arange(len(labels)), np.asarray(labels)]


def classification_metrics(logits, labels, label_names):
    """Loss, accuracy, macro/weighted F1, Matthews correlation, per-class report and confusion matrix."""
    labels = np.asarray(labels)
    predictions = np.asarray(logits).argmax(axis=-1)
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0)
    return {
        "loss": float(example_losses(logits, labels).mean()),
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, predictions, labels=ids, average="weighted", zero_division=0)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
        "n_examples": int(len(labels)),
    }


def scalar_metrics(metrics):
    """The single-number metrics, for logs and TensorBoard."""
    return {key: value for key, value in metrics.items() if isinstance(value, float)}


def trainer_compute_metrics(label_names):
    """`compute_metrics` for transformers.Trainer (it wants flat numbers)."""
    def compute(eval_prediction):
        metrics = classification_metrics(eval_prediction.predictions, eval_prediction.label_ids, label_names)
        return {key: value for key, value in scalar_metrics(metrics).items() if key != "loss"}
    return compute
