"""Scores from logits and the decision threshold, one definition each (NumPy only: the torch-free ONNX
classifier, the metrics and the reports all use these)."""
import numpy as np


def sigmoid(logits):
    """Per-label probabilities (multi-label): computed in float64 without overflow (exp(-logaddexp(0, -x))),
    returned in the logits' float precision (float64 for anything else)."""
    logits = np.asarray(logits)
    probabilities = np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))
    return probabilities.astype(logits.dtype) if np.issubdtype(logits.dtype, np.floating) else probabilities


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def log_softmax(logits):
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def probabilities_of(logits, multi_label):
    """A sigmoid per label for a multi-label model, a softmax over the labels otherwise."""
    logits = np.asarray(logits, dtype=np.float32)
    return sigmoid(logits) if multi_label else softmax(logits)


def at_threshold(probabilities, threshold):
    """The multi-label decision: which labels are at or above the threshold (one number for every label,
    or a sequence of one per label)."""
    return np.asarray(probabilities) >= np.asarray(threshold, dtype=np.float64)
