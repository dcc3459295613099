"""Train/validation/test splits and the label mapping they share, on Arrow tables.

A split is a parsed source (data_load.sources) and, where only part of it is used (the rows left
for training after --valid_ratio, a --max_train_samples subset), the row indices it keeps. The label
vocabulary and its checks (data_load.labels) and the validation split (data_load.validation) work on
Arrow columns and NumPy arrays, never on a Python object per row. What to read comes as DataOptions, typed values (the entry points build them from
their flags)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_load.arrow import select_rows
from data_load.labels import (MAX_LABELS, REGRESSION_LABEL, check_known_labels, check_targets, flatten_labels,
                              is_multi_label, label_ids, refuse_label_sets, sorted_labels)
from data_load.readers import SINGLE, Labeling
from data_load.sources import file_source, hub_sources, parse, pick_splits, unlabelled_source
from data_load.validation import seeded_subset, split_indices
from utils.errors import UserError
from utils.log import log


@dataclass(frozen=True)
class DataOptions:
    """Where the data is and how to read it: the data flags of the trainers, as values."""
    train_fn: object = None  # a file, a save_to_disk directory, or None with dataset_name
    valid_fn: object = None
    test_fn: object = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    labeling: Labeling = SINGLE
    valid_ratio: float = 0.1
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    cache_dir: object = None
    regression: bool = False  # one number a row instead of a class
    delimiter: str | None = None  # --delimiter: the field separator, overriding the file extension
    # the classes a model must have, in its order (a teacher's, when distilling): every label of the
    # data must be one of them
    classes: tuple | None = None
    classes_of: str = "the model"  # whose classes, for messages
    folds: int | None = None  # --cv K: the training rows cut into K folds (data_load.folds)
    fold: int | None = None  # --cv_fold: this run trains on the other folds and predicts this one (its test set)

    def __post_init__(self):
        """One training data set, named once: checked here, where every DataOptions is made (the trainers'
        from their flags, tests and code from values), and nowhere else."""
        if not self.train_fn and not self.dataset_name:
            raise UserError("the training data is missing: pass --train_fn FILE (or a save_to_disk directory) "
                            "or --dataset_name NAME")
        if self.train_fn and self.dataset_name:
            raise UserError("--train_fn and --dataset_name both name the training data: give one of them")
        if self.dataset_config_name and not self.dataset_name:
            raise UserError("--dataset_config_name needs --dataset_name")

    @property
    def columns(self):
        return self.text_column, self.text_pair_column, self.label_column


@dataclass
class Split:
    name: str  # the file or dataset split, for messages
    rows: object  # datasets.Dataset: text, text_pair, label, line (memory-mapped, the whole source)
    key: str  # cache key of the parsed rows
    digest: str  # the source's content identity (for --resume)
    has_pairs: bool
    indices: np.ndarray | None = None  # the rows of `rows` this split uses, in order; None: all
    sampled: bool = False  # cut down by --max_train_samples/--max_eval_samples

    def __len__(self):
        return len(self.rows) if self.indices is None else len(self.indices)

    @property
    def multi_label(self):
        return is_multi_label(self.rows)

    def flat_labels(self):
        """(every label of every row, the row each belongs to): for multi-label rows several each."""
        return flatten_labels(self.column("label"))

    def column(self, name):
        """An Arrow column of this split's rows."""
        column = self.rows.data.column(name)
        return column if self.indices is None else column.take(self.indices)

    def texts(self, limit=None, pairs=True):
        """The texts (and pairs) of the first `limit` rows (all rows: None), as a stream of strings."""
        n = len(self) if limit is None else min(limit, len(self))
        rows = select_rows(self.rows, np.arange(n) if self.indices is None else self.indices[:n])
        columns = ["text", "text_pair"] if pairs else ["text"]
        for batch in rows.select_columns(columns).iter(batch_size=10_000):
            for texts in zip(*(batch[name] for name in columns)):
                yield from (text for text in texts if text is not None)

    def subset(self, indices, sampled=False):
        """The split restricted to positions `indices` of it."""
        positions = np.asarray(indices, dtype=np.int64)
        kept = positions if self.indices is None else self.indices[positions]
        return Split(self.name, self.rows, self.key, self.digest, self.has_pairs, kept, sampled or self.sampled)


@dataclass
class Splits:
    train: Split
    valid: Split
    test: Split | None
    labels: list  # index = class id; regression: the one output, [REGRESSION_LABEL]
    regression: bool = False
    pool: Split | None = None  # --cv: every training row the folds share out (before any validation split)
    folds: np.ndarray | None = None  # --cv: the fold of each row of `pool`

    @property
    def label2id(self):
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def has_pairs(self):
        return self.train.has_pairs

    @property
    def multi_label(self):
        return self.train.multi_label

    def train_targets(self):
        """--regression: the training examples' numbers, a float64 NumPy array."""
        from data_load.labels import target_values
        return target_values(self.train.column("label")).to_numpy().astype(np.float64)

    def train_label_ids(self):
        """The training examples' class ids, a NumPy array (multi-label: every label of every example)."""
        values, _ = self.train.flat_labels()
        return label_ids(values, self.labels).to_numpy()

    def digests(self):
        """The training and validation data by content, for the --resume fingerprint."""
        digests = {"train_fn": self.train.digest}
        if self.valid.rows is not self.train.rows:
            digests["valid_fn"] = self.valid.digest
        return digests


def load_labelled(path, columns, labels, cache_dir=None, labeling=SINGLE, regression=False, delimiter=None):
    """One labelled file (or saved split) whose labels must all be among `labels` (a trained model's;
    regression: numbers), for scoring that model on it (evaluate_plm.py)."""
    source = _one_split(file_source(path), "--test_fn", path)
    rows, meta = parse(source, columns, cache_dir, labeling, delimiter)
    split = Split(source.name, rows, meta["key"], source.digest, meta["has_pairs"])
    if regression:
        check_targets(split)
    else:
        check_known_labels(split, labels, known_from="the model's labels")
    return split


def load_unlabelled(path, options, pairs=False, text_column=None):
    """Texts without labels (distill_plm.py --unlabeled_fn) as a Split whose labels are null, parsed and
    cached as the training data is, with its column flags (text_column, when given, instead of its text
    column); pairs: texts are sentence pairs."""
    source = unlabelled_source(path, pairs)
    columns = (text_column or options.text_column, options.text_pair_column, None)
    rows, meta = parse(source, columns, options.cache_dir, options.labeling)
    if not len(rows):
        raise UserError(f"{path}: no texts in it (every line is blank)")
    return Split(source.name, rows, meta["key"], source.digest, pairs)


def load_splits(options):
    """Read the training data (a file or a dataset), the validation data (a file, a validation split,
    or split off valid_ratio) and the test data; check the labels agree; apply the sample limits."""
    columns, cache_dir, labeling = options.columns, options.cache_dir, options.labeling
    train_source, valid_source, test_source = _sources(options)

    declared = {}

    def read(source):
        rows, meta = parse(source, columns, cache_dir, labeling, options.delimiter)
        declared.setdefault("labels", meta.get("declared_labels"))
        return Split(source.name, rows, meta["key"], source.digest, meta["has_pairs"])

    train = read(train_source)
    # Labels named by --label_names_fn or --label_columns are the model's classes, in that order, also
    # those the training data never shows; otherwise the labels the training data holds, sorted.
    declared_labels = list(labeling.names) if labeling.names else declared["labels"]
    if options.regression:
        return _regression_splits(options, train, valid_source and read(valid_source),
                                  test_source and read(test_source))
    known_from = f"{options.classes_of}'s labels" if options.classes else "the training data"
    if options.classes:
        labels = list(options.classes)
        check_known_labels(train, labels, known_from)
    elif declared_labels:
        labels = declared_labels
        if len(labels) < 2:
            raise UserError(f"{train.name}: only one class ({labels[0]!r}): a classifier needs at least two")
    else:
        distinct = train.flat_labels()[0].unique()
        if len(distinct) > MAX_LABELS:  # before turning them into Python strings: it may be a text column
            raise UserError(f"{train.name}: {len(distinct)} distinct labels in {len(train)} rows: this is probably "
                            "not the label column; choose it with --label_column")
        labels = sorted_labels(set(distinct.to_pylist()), len(train), train.name)
    if not train.multi_label:
        refuse_label_sets(train, labels)
    elif any(labeling.separator in label for label in labels):
        label = next(label for label in labels if labeling.separator in label)
        raise UserError(f"{train.name}: the label {label!r} contains the label separator {labeling.separator!r}, "
                        "which would split it when the model's predictions are printed: choose another "
                        "--label_separator")
    else:
        mixed = next(((label, mark) for label in labels for mark in ",;|" if mark in label), None)
        if mixed:  # `a;b` among `a,b` fields: a class of its own unless the file mixes separators by mistake
            log.warning(f"{train.name}: the label {mixed[0]!r} contains {mixed[1]!r}: if it holds several labels, "
                        f"the file mixes separators; --label_separator is {labeling.separator!r}")
    valid = test = None
    if valid_source is not None:
        valid = read(valid_source)
        check_known_labels(valid, labels, known_from)
    if test_source is not None:
        test = read(test_source)
        check_known_labels(test, labels, known_from)
    if options.folds:
        return _cross_validation_splits(options, train, valid, test, labels)
    if valid is None:
        train, valid = _split_off_validation(train, labels, options)
    train = seeded_subset(train, options.max_train_samples, options.seed)
    valid = seeded_subset(valid, options.max_eval_samples, options.seed)
    test = test and seeded_subset(test, options.max_eval_samples, options.seed)
    return Splits(train=train, valid=valid, test=test, labels=labels)


def _split_off_validation(train, labels, options):
    """(train, valid): --valid_ratio of the rows split off, seeded, stratified by label."""
    # codes in text order, as np.unique orders the label texts: the split the rows would get.
    # Label sets (multi-label) cannot be stratified: split at random.
    codes = None if train.multi_label else label_ids(train.column("label"), sorted(labels)).to_numpy()
    train_positions, valid_positions = split_indices(codes, options.valid_ratio, options.seed, len(train))
    return train.subset(train_positions), train.subset(valid_positions)


def _cross_validation_splits(options, train, valid, test, labels):
    """--cv K: the training rows (a --max_train_samples subset first) cut into K folds. The run of fold k
    (options.fold) trains on the other folds, is validated on --valid_fn or on --valid_ratio of those (never on
    fold k: the fold's probabilities must come from a model that neither trained nor chose its epoch on it),
    and predicts fold k as its test set. Without options.fold (the --cv run itself, and --cv_final), the
    splits are those of a run without --cv."""
    from data_load.folds import fold_of_rows
    pool = seeded_subset(train, options.max_train_samples, options.seed)
    folds = fold_of_rows(pool, labels, options.folds, options.seed)
    if options.fold is None:
        train = pool
    else:
        train, test = pool.subset(np.flatnonzero(folds != options.fold)), pool.subset(np.flatnonzero(folds == options.fold))
    if valid is None:
        train, valid = _split_off_validation(train, labels, options)
    valid = seeded_subset(valid, options.max_eval_samples, options.seed)
    if options.fold is None:
        test = test and seeded_subset(test, options.max_eval_samples, options.seed)
    return Splits(train=train, valid=valid, test=test, labels=labels, pool=pool, folds=folds)


def _regression_splits(options, train, valid, test):
    """--regression: every label a number; validation split off at random (numbers have no strata)."""
    for split in (train, valid, test):
        if split is not None:
            check_targets(split)
    if valid is None:
        train_positions, valid_positions = split_indices(None, options.valid_ratio, options.seed, len(train))
        train, valid = train.subset(train_positions), train.subset(valid_positions)
    train = seeded_subset(train, options.max_train_samples, options.seed)
    valid = seeded_subset(valid, options.max_eval_samples, options.seed)
    test = test and seeded_subset(test, options.max_eval_samples, options.seed)
    splits = Splits(train=train, valid=valid, test=test, labels=[REGRESSION_LABEL], regression=True)
    # as a classifier needs two classes: one training row, or one value in every row, teaches no number
    # (the spread the loss divides by is 0, and the model learns to say that value whatever the text)
    distinct = np.unique(splits.train_targets())
    if len(distinct) < 2:
        what = ("no training row is left" if not len(distinct) else
                f"the one training row has the target {distinct[0]:g}" if len(train) == 1 else
                f"every training row has the target {distinct[0]:g}")
        raise UserError(f"{train.name}: {what} (after the validation split): --regression needs targets that vary; "
                        "check the label column (--label_column), or train on more rows")
    return splits


def _sources(options):
    """train, valid and test Sources; a given file wins over a split of the dataset."""
    train_fn, dataset_name = options.train_fn, options.dataset_name  # one of them (DataOptions checks)
    for flag, other in (("valid_fn", options.valid_fn), ("test_fn", options.test_fn)):
        if (other and train_fn and Path(other).exists() and Path(train_fn).exists()
                and Path(other).samefile(train_fn)):
            raise UserError(f"--{flag} {other} is the training file: scores on data the model trained on measure "
                            f"nothing; give a held-out file" + (" or leave out --valid_fn to split one off"
                                                                if flag == "valid_fn" else ""))
    if dataset_name:
        train, valid, test = pick_splits(hub_sources(dataset_name, options.dataset_config_name, options.cache_dir),
                                         dataset_name, options.label_column)
    else:
        train, valid, test = pick_splits(file_source(train_fn), train_fn, options.label_column)
    if options.valid_fn:
        valid = _one_split(file_source(options.valid_fn), "--valid_fn", options.valid_fn)
    if options.test_fn:
        test = _one_split(file_source(options.test_fn), "--test_fn", options.test_fn)
    return train, valid, test


def _one_split(source, flag, path):
    if isinstance(source, dict):
        raise UserError(f"{flag} {path}: holds several splits ({', '.join(source)}): pass the directory of one, "
                        f"e.g. {Path(path) / next(iter(source))}")
    return source
