"""Which labels a classifier prints for each sentence, from its probabilities (NumPy only: the ONNX
classifier uses it without torch)."""
import numpy as np

from scoring.scores import at_threshold


def choose_labels(probabilities, multi_label, top_k=None, threshold=0.5):
    """(scores, label ids) per row, most probable first. Single-label: the top_k (default 1) most
    probable. Multi-label: every label at or above the threshold (a number, or a list of one per label;
    at most top_k when given), or the most probable one when none is."""
    order = np.argsort(-probabilities, axis=-1, kind="stable")
    if not multi_label:
        best = order[:, :top_k or 1]
        return np.take_along_axis(probabilities, best, axis=-1).tolist(), best.tolist()
    passes = at_threshold(probabilities, threshold)
    scores, ids = [], []
    for row, ranked, passing in zip(probabilities, order, passes):
        chosen = [j for j in ranked if passing[j]][:top_k] or [ranked[0]]
        scores.append([float(row[j]) for j in chosen])
        ids.append([int(j) for j in chosen])
    return scores, ids
