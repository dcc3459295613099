"""The folds of --cv K: every training row in exactly one of K folds, seeded and stratified by label, and
what the run of one fold trains, validates and predicts on.

Single-label: scikit-learn's StratifiedKFold (shuffled, seeded by --seed), so each fold holds each class
in its share of the data. Multi-label: label sets cannot be stratified as classes (GoEmotions has hundreds
of distinct sets, most seen once), so folds are cut by iterative stratification (Sechidis, Tsoumakas and
Vlahavas 2011, the method scikit-multilearn implements): the rarest label's rows are dealt first, each to
the fold that still wants most of that label, so that every label is spread over the folds in proportion."""
import numpy as np

from data_load.labels import label_ids, multi_hot
from utils.errors import UserError


def fold_of_rows(split, labels, k, seed, flag="--cv"):
    """The fold (0..k-1) of each row of `split`, an int8 array; refused in one line when a class has
    fewer than k rows (a fold without it could not score it)."""
    n = len(split)
    if k > n:
        raise UserError(f"{flag} {k}: {split.name} has only {n} training rows: choose {flag} at most {n}")
    if split.multi_label:
        values, rows = split.flat_labels()
        matrix = multi_hot(rows.to_numpy(), label_ids(values, labels).to_numpy(), n, len(labels), dtype=bool)
        counts = matrix.sum(axis=0)
        present = counts > 0
        rarest = int(np.argmin(np.where(present, counts, n + 1)))
        if counts[rarest] < k:
            raise UserError(f"{flag} {k}: the label {labels[rarest]!r} has only {counts[rarest]} rows in {split.name}, "
                            f"so some fold would have none of it: choose {flag} at most {counts[rarest]}, or drop "
                            "that label")
        return iterative_stratification(matrix, k, seed)
    codes = label_ids(split.column("label"), labels).to_numpy()
    counts = np.bincount(codes, minlength=len(labels))
    present = np.flatnonzero(counts)
    rarest = present[np.argmin(counts[present])]
    if counts[rarest] < k:
        raise UserError(f"{flag} {k}: the class {labels[rarest]!r} has only {counts[rarest]} rows in {split.name}, "
                        f"so some fold would have none of it: choose {flag} at most {counts[rarest]}")
    from sklearn.model_selection import StratifiedKFold
    folds = np.empty(n, dtype=np.int8)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(n), codes)):
        folds[held_out] = fold
    return folds


def iterative_stratification(matrix, k, seed):
    """Folds of multi-label rows (a rows x labels bool matrix), each label spread over the k folds in
    proportion (Sechidis et al. 2011): the label with the fewest rows left goes first, each of its rows to
    the fold that wants most of it (ties: the fold that wants most rows, then at random). Rows without a
    label fill the folds that want most rows."""
    rng = np.random.default_rng(seed)
    n, n_labels = matrix.shape
    folds = np.full(n, -1, dtype=np.int8)
    wanted_rows = np.full(k, n / k)
    wanted = np.tile(matrix.sum(axis=0) / k, (k, 1)).astype(np.float64)  # fold x label
    left = matrix.copy()
    while left.any():
        remaining = left.sum(axis=0)
        label = int(np.argmin(np.where(remaining > 0, remaining, n + 1)))
        for row in rng.permutation(np.flatnonzero(left[:, label])):
            fold = _most_wanting(wanted[:, label], wanted_rows, rng)
            folds[row] = fold
            wanted[fold] -= matrix[row]
            wanted_rows[fold] -= 1
            left[row] = False
    for row in rng.permutation(np.flatnonzero(folds < 0)):
        fold = _most_wanting(wanted_rows, wanted_rows, rng)
        folds[row] = fold
        wanted_rows[fold] -= 1
    return folds


def _most_wanting(first, second, rng):
    candidates = np.flatnonzero(first == first.max())
    if len(candidates) > 1:
        candidates = candidates[second[candidates] == second[candidates].max()]
    return int(rng.choice(candidates))
