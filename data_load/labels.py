"""The label vocabulary: the classes a training set has, in a stable order, their ids on Arrow columns,
the checks that keep a label column honest, and multi-hot rows for multi-label examples."""
import numpy as np

from utils.errors import UserError, located
from utils.log import log

MAX_LABELS = 10_000
MANY_LABELS = 50  # above this, a label column with more labels than half its rows is refused


def sorted_labels(labels, n_rows, path):
    """Sorted distinct labels: numeric order if every label is an integer (so 2 < 10), else text order.

    Sorting makes the mapping independent of file order, so two runs on shuffled copies of one
    file give the same class ids."""
    # Classes repeat: when most rows carry a label of their own, the column holds texts or ids.
    if len(labels) > MAX_LABELS or (len(labels) > MANY_LABELS and len(labels) > n_rows / 2):
        raise UserError(f"{path}: {len(labels)} distinct labels in {n_rows} rows: this is probably not the "
                        "label column; choose it with --label_column")
    if not labels:
        raise UserError(f"{path}: no labels at all (every label field is empty): fill in the label column, or "
                        "choose it with --label_column")
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
            log.warning(f"{path}: labels {by_case[label.casefold()]!r} and {label!r} differ only in case; they are "
                        "two classes")
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
    column (multi-label) gives a list of ids per row (null for a null row: unlabelled text, not "no label")."""
    import pyarrow as pa
    import pyarrow.compute as pc
    value_set = pa.array(labels, type=pa.string())
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(column.type):
        offsets = pc.subtract(column.offsets, column.offsets[0])
        return pa.ListArray.from_arrays(offsets, pc.index_in(column.flatten(), value_set=value_set).cast(pa.int32()),
                                        mask=column.is_null() if column.null_count else None)
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


def refuse_label_sets(split, labels, separators=(",", ";", "|")):
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


def multi_hot(rows, ids, n_rows, n_labels, dtype=np.int8):
    """The one 0/1 label matrix (rows x labels) of multi-label examples: a 1 at each (row, label id)."""
    matrix = np.zeros((n_rows, n_labels), dtype=dtype)
    matrix[np.asarray(rows, dtype=np.int64), np.asarray(ids, dtype=np.int64)] = 1
    return matrix


def _is_int(text):
    return text.lstrip("-").isdigit()


REGRESSION_LABEL = "score"  # the one output of a regression model (config id2label, reports)


# The model computes in 32-bit floats (largest 3.4e38), its output layer scaled by the targets' spread and
# shifted by their mean (checkpoint.pretrained.output_in_label_units): a target of 1e308, or rows of +-1e200,
# make that spread infinite and the loss nan. 1e30 leaves room for both and for squared errors in the metrics.
MAX_TARGET_TEXT = "1e30"
MAX_TARGET = float(MAX_TARGET_TEXT)
_CHUNK = 65_536  # rows cast at a time while looking for the first bad one


def check_targets(split):
    """--regression: every label a finite number within +-MAX_TARGET, as Arrow reads it (target_values); the
    first that is not is a file:line error."""
    column = split.column("label")
    if is_multi_label(split.rows):
        raise UserError(f"{split.name}: --regression reads one number a row; this label column holds lists")
    if _targets_fit(column):
        return
    for start in range(0, len(column), _CHUNK):  # the first bad row, read by the parser that reads them all
        chunk = column.slice(start, _CHUNK)
        if _targets_fit(chunk):
            continue
        for offset in range(len(chunk)):
            if _targets_fit(chunk.slice(offset, 1)):
                continue
            text, line = chunk[offset].as_py(), split.column("line")[start + offset].as_py()
            number = _targets(chunk.slice(offset, 1))
            number = None if number is None else number[0].as_py()  # None: not a number, or an empty field
            if number is not None and np.isfinite(number):
                raise located(split.name, line, f"label {text!r} is too large for --regression: the model computes "
                                                f"in 32-bit floats, so targets must lie within +-{MAX_TARGET_TEXT}; "
                                                "rescale them (divide them by a power of ten, or take their logarithm)")
            raise located(split.name, line, f"label {text!r} is not a number: --regression reads one number a row "
                                            "(e.g. 3.8 or -1.5e3); fix the row, or choose the label column with "
                                            "--label_column")


def _targets(column):
    """The float64 numbers of label texts as target_values reads them, or None when one is not a number."""
    import pyarrow as pa
    import pyarrow.compute as pc
    try:
        return pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _targets_fit(column):
    import pyarrow.compute as pc
    values = _targets(column)
    return values is not None and values.null_count == 0 and pc.all(pc.less_equal(pc.abs(values), MAX_TARGET)).as_py()


def target_values(column):
    """The numbers of an Arrow column of label texts (checked by check_targets), as float32."""
    import pyarrow as pa
    import pyarrow.compute as pc
    return pc.cast(pc.cast(pc.utf8_trim_whitespace(column), pa.float64()), pa.float32())
