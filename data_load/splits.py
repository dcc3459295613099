"""Train/validation/test splits and the label mapping they share, on Arrow tables.

A split is a parsed source (data_load.sources) and, where only part of it is used (the rows left
for training after --valid_ratio, a --max_train_samples subset), the row indices it keeps. Labels,
class checks and the stratified split work on Arrow columns and NumPy arrays, never on a Python
object per row."""
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_load.readers import SINGLE, Labeling, read_label_names
from data_load.sources import file_source, hub_sources, parse, pick_splits
from utils.errors import UserError, located

MAX_LABELS = 10_000
MANY_LABELS = 50  # above this, a label column with more labels than half its rows is refused


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
    labels: list  # index = class id

    @property
    def label2id(self):
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def has_pairs(self):
        return self.train.has_pairs

    @property
    def multi_label(self):
        return self.train.multi_label

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


def select_rows(dataset, indices):
    """dataset.select(indices) for a table without a selection of its own, without the Python list of
    every index that Dataset.select builds (datasets 5.2: 20 s and 350 MB for 9 million rows)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable
    indices_table = InMemoryTable(pa.table({"indices": pa.array(np.asarray(indices, dtype=np.uint64))}))
    return datasets.Dataset(dataset.data, info=dataset.info.copy(), split=dataset.split, indices_table=indices_table,
                            fingerprint=f"{dataset._fingerprint}-{hashlib.blake2b(np.asarray(indices).tobytes(), digest_size=8).hexdigest()}")


def label_list(examples, path):
    """label_list over in-memory Examples (tests, small files): see sorted_labels."""
    return sorted_labels({example.label for example in examples}, len(examples), path)


def sorted_labels(labels, n_rows, path):
    """Sorted distinct labels: numeric order if every label is an integer (so 2 < 10), else text order.

    Sorting makes the mapping independent of file order, so two runs on shuffled copies of one
    file give the same class ids."""
    # Classes repeat: when most rows carry a label of their own, the column holds texts or ids.
    if len(labels) > MAX_LABELS or (len(labels) > MANY_LABELS and len(labels) > n_rows / 2):
        raise UserError(f"{path}: {len(labels)} distinct labels in {n_rows} rows: this is probably not the "
                        "label column; choose it with --label_column")
    if len(labels) < 2:
        raise UserError(f"{path}: only one class ({next(iter(labels))!r}): a classifier needs at least two")
    if all(_is_int(label) for label in labels):
        by_value = {}
        for label in sorted(labels):
            if int(label) in by_value:
                raise UserError(f"{path}: labels {by_value[int(label)]!r} and {label!r} are the same number written "
                                "two ways: write it one way")
            by_value[int(label)] = label
        return sorted(labels, key=int)
    by_case = {}
    for label in sorted(labels):
        if label.casefold() in by_case:
            print(f"warning: {path}: labels {by_case[label.casefold()]!r} and {label!r} differ only in case; they are "
                  "two classes", file=sys.stderr)
        by_case.setdefault(label.casefold(), label)
    return sorted(labels)


def is_multi_label(table):
    import datasets
    return isinstance(table.features["label"], (datasets.List, datasets.Sequence, list))


def flatten_labels(column):
    """(label texts, row of each) of an Arrow label column; a list column (multi-label) is flattened."""
    import pyarrow as pa
    import pyarrow.compute as pc
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        return column, None
    return pc.list_flatten(column), pc.list_parent_indices(column)


def label_ids(column, labels):
    """Class ids of an Arrow column of label texts (null where a label is not in `labels`); a list
    column (multi-label) gives a list of ids per row."""
    import pyarrow as pa
    import pyarrow.compute as pc
    value_set = pa.array(labels, type=pa.string())
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(column.type):
        offsets = pc.subtract(column.offsets, column.offsets[0])
        return pa.ListArray.from_arrays(offsets, pc.index_in(column.flatten(), value_set=value_set).cast(pa.int32()))
    return pc.index_in(column, value_set=value_set).cast(pa.int32())


def check_known_labels(split, labels, known_from="the training data"):
    values, rows = split.flat_labels()
    ids = label_ids(values, labels)
    if ids.null_count:
        import pyarrow.compute as pc
        first = pc.index(pc.is_null(ids), True).as_py()
        row = first if rows is None else rows[first].as_py()
        line = split.column("line")[row].as_py()
        raise located(split.name, line, f"label {values[first].as_py()!r} never occurs in {known_from} "
                                        f"(known: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''})")


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
        print("warning: cannot stratify the validation split (too few examples of some class); "
              "splitting at random", file=sys.stderr)
        try:
            return train_test_split(positions, test_size=ratio, random_state=seed)
        except ValueError as error:
            raise UserError(f"cannot split off {ratio:.0%} for validation: {error}") from None


def stratified_split(codes, ratio, seed):
    """train_test_split(positions, test_size=ratio, random_state=seed, stratify=codes), the same split
    drawn with the same random numbers, on NumPy arrays: scikit-learn collects the positions in Python
    lists (on 10 million rows, 660 MB more peak memory). Raises ValueError where scikit-learn would."""
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


def split_off_validation(examples, ratio, seed):
    """split_indices for a list of Examples: (train, valid) lists."""
    codes = np.unique([example.label for example in examples], return_inverse=True)[1]
    train, valid = split_indices(codes, ratio, seed)
    return [examples[i] for i in train], [examples[i] for i in valid]


def seeded_subset(split, n, seed):
    """At most n rows of the split, drawn with the seed, kept in their order (--max_*_samples)."""
    if n is None or n >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:n]), sampled=True)


def _refuse_label_sets(split, labels, separators=(",", ";", "|")):
    """A single-label run on multi-label data would learn `joy,love` as a class of its own: refuse a
    label made of other labels joined by a separator, and point at --multi_label."""
    known = set(labels)
    for label in labels:
        for separator in separators:
            parts = [part.strip() for part in label.split(separator)]
            if len(parts) > 1 and all(part in known for part in parts):
                import pyarrow.compute as pc
                row = pc.index(split.column("label"), label).as_py()
                raise located(split.name, split.column("line")[row].as_py(),
                              f"label {label!r} is several labels ({', '.join(parts)}) joined by {separator!r}: pass "
                              f"--multi_label (with --label_separator {separator!r}) to train a multi-label classifier")


def labeling_from(args):
    """The label flags (--multi_label, --label_separator, --label_columns, --label_names_fn) as a Labeling."""
    columns = getattr(args, "label_columns", None)
    if columns and getattr(args, "label_column", None):
        raise UserError("--label_column and --label_columns both given: one label column, or one 0/1 column per label")
    names_fn = getattr(args, "label_names_fn", None)
    return Labeling(multi=bool(getattr(args, "multi_label", False) or columns),
                    separator=getattr(args, "label_separator", None) or ",",
                    columns=tuple(part.strip() for part in columns.split(",")) if columns else None,
                    names=read_label_names(names_fn) if names_fn else None)


def load_labelled(path, columns, labels, cache_dir=None, labeling=SINGLE):
    """One labelled file (or saved split) whose labels must all be among `labels` (a trained model's),
    for scoring that model on it (evaluate_plm.py)."""
    source = _one_split(file_source(path), "--test_fn", path)
    rows, meta = parse(source, columns, cache_dir, labeling)
    split = Split(source.name, rows, meta["key"], source.digest, meta["has_pairs"])
    check_known_labels(split, labels, known_from="the model's labels")
    return split


def load_splits(args):
    """Read --train_fn (or --dataset_name), --valid_fn (or a validation split, or split off
    --valid_ratio) and --test_fn; check the labels agree; apply --max_train_samples/--max_eval_samples."""
    columns = (args.text_column, args.text_pair_column, args.label_column)
    cache_dir = getattr(args, "cache_dir", None)
    labeling = labeling_from(args)
    train_source, valid_source, test_source = _sources(args)

    declared = {}

    def read(source):
        rows, meta = parse(source, columns, cache_dir, labeling)
        declared.setdefault("labels", meta.get("declared_labels"))
        return Split(source.name, rows, meta["key"], source.digest, meta["has_pairs"])

    train = read(train_source)
    # Labels named by --label_names_fn or --label_columns are the model's classes, in that order, also
    # those the training data never shows; otherwise the labels the training data holds, sorted.
    declared_labels = list(labeling.names) if labeling.names else declared["labels"]
    if declared_labels:
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
        _refuse_label_sets(train, labels)
    elif any(labeling.separator in label for label in labels):
        label = next(label for label in labels if labeling.separator in label)
        raise UserError(f"{train.name}: the label {label!r} contains the label separator {labeling.separator!r}, "
                        "which would split it when the model's predictions are printed: choose another "
                        "--label_separator")
    if valid_source is not None:
        valid = read(valid_source)
        check_known_labels(valid, labels)
    else:
        # codes in text order, as np.unique orders the label texts: the split the rows would get.
        # Label sets (multi-label) cannot be stratified: split at random.
        codes = None if train.multi_label else label_ids(train.column("label"), sorted(labels)).to_numpy()
        train_positions, valid_positions = split_indices(codes, args.valid_ratio, args.seed, len(train))
        train, valid = train.subset(train_positions), train.subset(valid_positions)
    test = None
    if test_source is not None:
        test = read(test_source)
        check_known_labels(test, labels)
    seed = args.seed
    train = seeded_subset(train, getattr(args, "max_train_samples", None), seed)
    valid = seeded_subset(valid, getattr(args, "max_eval_samples", None), seed)
    test = test and seeded_subset(test, getattr(args, "max_eval_samples", None), seed)
    return Splits(train=train, valid=valid, test=test, labels=labels)


def _sources(args):
    """train, valid and test Sources from the flags; a flag's file wins over a split of the dataset."""
    dataset_name = getattr(args, "dataset_name", None)
    if dataset_name and args.train_fn:
        raise UserError(f"--train_fn {args.train_fn} and --dataset_name {dataset_name}: give one of them")
    if not dataset_name and not args.train_fn:
        raise UserError("no training data: pass --train_fn FILE (or a save_to_disk directory) or --dataset_name NAME")
    for flag in ("valid_fn", "test_fn"):
        other = getattr(args, flag)
        if (other and args.train_fn and Path(other).exists() and Path(args.train_fn).exists()
                and Path(other).samefile(args.train_fn)):
            raise UserError(f"--{flag} {other} is the training file: scores on data the model trained on measure "
                            f"nothing; give a held-out file" + (" or leave out --valid_fn to split one off"
                                                                if flag == "valid_fn" else ""))
    if dataset_name:
        train, valid, test = pick_splits(hub_sources(dataset_name, getattr(args, "dataset_config_name", None),
                                                     getattr(args, "cache_dir", None)),
                                         dataset_name, args.label_column)
    else:
        train, valid, test = pick_splits(file_source(args.train_fn), args.train_fn, args.label_column)
    if args.valid_fn:
        valid = _one_split(file_source(args.valid_fn), "--valid_fn", args.valid_fn)
    if args.test_fn:
        test = _one_split(file_source(args.test_fn), "--test_fn", args.test_fn)
    return train, valid, test


def _one_split(source, flag, path):
    if isinstance(source, dict):
        raise UserError(f"{flag} {path}: holds several splits ({', '.join(source)}): pass the directory of one, "
                        f"e.g. {Path(path) / next(iter(source))}")
    return source


def _is_int(text):
    return text.lstrip("-").isdigit()
