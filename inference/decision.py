"""Which labels a classifier prints for each sentence, from its probabilities (NumPy only: the ONNX
classifier uses it without torch)."""
import numpy as np


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-logits))


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def probabilities_of(logits, multi_label):
    """A sigmoid per label for a multi-label model, a softmax over the labels otherwise."""
    logits = np.asarray(logits, dtype=np.float32)
    return sigmoid(logits) if multi_label else softmax(logits)


def choose_labels(probabilities, multi_label, top_k=None, threshold=0.5):
    """(scores, label ids) per row, most probable first. Single-label: the top_k (default 1) most
    probable. Multi-label: every label at or above the threshold (a number, or a list of one per label;
    at most top_k when given), or the most probable one when none is."""
    order = np.argsort(-probabilities, axis=-1, kind="stable")
    if not multi_label:
        best = order[:, :top_k or 1]
        return np.take_along_axis(probabilities, best, axis=-1).tolist(), best.tolist()
    limits = np.broadcast_to(np.asarray(threshold, dtype=np.float64), probabilities.shape[-1:])
    scores, ids = [], []
    for row, ranked in zip(probabilities, order):
        chosen = [j for j in ranked if row[j] >= limits[j]][:top_k] or [ranked[0]]
        scores.append([float(row[j]) for j in chosen])
        ids.append([int(j) for j in chosen])
    return scores, ids
