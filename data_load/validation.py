"""The validation split cut from the training data (seeded, stratified by label) and the seeded subsets
of --max_train_samples / --max_eval_samples."""
import math

import numpy as np

from utils.errors import UserError
from utils.log import log


def split_indices(label_codes, ratio, seed, n_rows=None):
    """(train, valid) positions: a seeded split of `ratio` for validation, stratified by label where
    possible (label_codes None: at random). Splitting positions with scikit-learn gives the split it
    gives the rows themselves."""
    if not 0 < ratio < 1:
        raise UserError(f"--valid_ratio must be between 0 and 1, got {ratio}")
    from sklearn.model_selection import train_test_split  # here, not at the top: 2 s of start-up
    positions = np.arange(len(label_codes) if label_codes is not None else n_rows)
    try:
        if label_codes is None:
            return train_test_split(positions, test_size=ratio, random_state=seed)
        return stratified_split(np.asarray(label_codes), ratio, seed)
    except ValueError:
        # Some class has a single example (or the split is too small to hold each class):
        # fall back to an unstratified split rather than refusing to train.
        log.warning("cannot stratify the validation split (too few examples of some class); splitting at random, "
                    "so some class may be missing from validation: give a held-out file with --valid_fn")
        try:
            return train_test_split(positions, test_size=ratio, random_state=seed)
        except ValueError as error:
            raise UserError(f"cannot split off {ratio:.0%} for validation: {error}; give a held-out file with "
                            "--valid_fn") from None


def stratified_split(codes, ratio, seed):
    """train_test_split(positions, test_size=ratio, random_state=seed, stratify=codes), the same split
    drawn with the same random numbers, on NumPy arrays: scikit-learn collects the positions in Python
    lists (hundreds of MB more peak memory on millions of rows: docs/benchmarks.md, "Figures behind the code").
    Raises ValueError where scikit-learn would."""
    from sklearn.utils import check_random_state
    from sklearn.utils.extmath import _approximate_mode
    n = len(codes)
    n_test = math.ceil(ratio * n)
    n_train = n - n_test
    classes, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    if counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError("too few examples of some class to stratify")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = check_random_state(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        members = by_class[i].take(rng.permutation(counts[i]), mode="clip")
        train.append(members[:n_i[i]])
        test.append(members[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def seeded_subset(split, n, seed):
    """At most n rows of the split, drawn with the seed, kept in their order (--max_*_samples)."""
    if n is None or n >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:n]), sampled=True)
