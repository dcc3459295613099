"""Which unlabelled texts to label next (classify_plm.py --select): how unsure the model is of each text
(uncertainty sampling, Lewis and Gale 1994; measured on transformers by Schröder et al. 2022), and a pick
of the N most uncertain that are not near-duplicates of each other (--diversity).

Scores are "higher: less sure", in [0, 1]:
  margin   1 - (p of the most probable label - p of the second); multi-label: 1 - 2 x the distance of the
           label closest to 0.5 from it (the label it is least sure of)
  entropy  the entropy of the probabilities over log(labels); multi-label: the mean binary entropy of the labels
  random   a seeded random number (the baseline every strategy must beat)"""
import numpy as np

STRATEGIES = ("margin", "entropy", "random")
# --diversity: k-means runs over the PREFILTER x N most uncertain texts only (Zhdanov 2019, "Diverse mini-batch
# active learning", prefilters the same way with beta = 10): the N clusters then hold uncertain texts, and
# k-means over a whole pool of millions would cost more than classifying it
PREFILTER = 10


def uncertainty(probabilities, strategy, multi_label=False, seed=0):
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n, n_labels = probabilities.shape
    if strategy == "random":
        return np.random.default_rng(seed).random(n)
    if multi_label:
        if strategy == "margin":
            return 1 - 2 * np.abs(probabilities - 0.5).min(axis=1)
        p = np.clip(probabilities, 1e-12, 1 - 1e-12)
        return (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean(axis=1)
    if strategy == "margin":
        if n_labels < 2:
            return np.zeros(n)
        top_two = np.sort(probabilities, axis=1)[:, -2:]
        return 1 - (top_two[:, 1] - top_two[:, 0])
    p = np.clip(probabilities, 1e-12, 1)
    return -(p * np.log(p)).sum(axis=1) / np.log(n_labels)


def select(scores, n, embeddings=None, seed=0):
    """(positions of the n texts to label, most uncertain first; their k-means cluster or None). With
    embeddings (--diversity): the PREFILTER x n most uncertain are clustered into n groups by k-means on the
    unit-length embeddings, and each group gives its most uncertain text."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    if embeddings is None or n >= len(scores):
        return order[:n], None
    from sklearn.cluster import KMeans
    candidates = order[:min(len(order), PREFILTER * n)]
    vectors = np.asarray(embeddings, dtype=np.float64)[candidates]
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    clusters = KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(vectors)
    best = {}
    for position, cluster in zip(candidates, clusters):  # candidates are most uncertain first
        best.setdefault(int(cluster), int(position))
    chosen = np.array(sorted(best.values(), key=lambda position: -scores[position]), dtype=np.int64)
    cluster_of = {position: cluster for cluster, position in best.items()}
    return chosen, np.array([cluster_of[position] for position in chosen])
