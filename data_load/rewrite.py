"""A copy of a training file with some rows dropped or relabelled (find_label_errors.py --fix), in the file's
own format, so that the trainers read it back with the same flags: every other byte is kept as it was
(header, extra columns, quoting, line endings). Rows are named by the line they start on (Parquet: their
row number), as every reader here numbers them."""
import csv
import io
import json
from pathlib import Path

from data_load.readers import DEFAULT_LABEL_COLUMNS, Labeling, file_kind, file_rows, text_lines
from utils.errors import UserError


def write_fixed_copy(source, target, columns, changes):
    """Write `target`: `source` with each row in `changes` ({line: None to drop it, or the new label:
    a text, or a list of texts for multi-label}) changed. columns: the column flags the data was read
    with (text_column, label_column, delimiter, label_separator, label_columns, label_names_fn)."""
    source, target = Path(source), Path(target)
    relabels = any(value is not None for value in changes.values())
    if relabels and (columns.get("label_columns") or columns.get("label_names_fn")):
        raise UserError(f"--fix relabel: {source} gives its labels as "
                        f"{'0/1 columns (--label_columns)' if columns.get('label_columns') else 'class ids (--label_names_fn)'}"
                        ", which a relabelled copy would have to rewrite in another form: use --fix drop")
    if source.suffix.lower() == ".parquet":
        return _parquet_copy(source, target, columns, changes)
    labeling = Labeling.from_flags(False, columns.get("label_separator"), columns.get("label_columns"), None,
                                   columns.get("label_column"))
    kind = file_kind(source, columns.get("text_column"), columns.get("text_pair_column"), columns.get("label_column"),
                     labeling, columns.get("delimiter"))
    delimiter = columns.get("delimiter") or {"csv": ",", "tsv": "\t", "reference": "\t"}.get(kind)
    quoted = kind == "csv" or (kind == "delimited" and delimiter != "\t")
    # where each record starts: a quoted record may span lines, up to the next record's first line
    starts = [line for line, _ in file_rows(source, kind, delimiter=columns.get("delimiter"))] if quoted else None
    span_end = dict(zip(starts, starts[1:] + [None])) if quoted else {}
    label_key = None
    separator = columns.get("label_separator") or ","
    with open(target, "w", encoding="utf-8", newline="") as out:
        lines = text_lines(source, keep_ends=True)
        pending = None  # (line, [pieces]) of a changed quoted record still being read
        header = None
        for number, piece in lines:
            if pending is not None:
                if span_end[pending[0]] is None or number < span_end[pending[0]]:
                    pending[1].append(piece)
                    continue
                out.write(_changed(pending, changes, kind, label_key, delimiter, separator, quoted, source))
                pending = None
            if header is None and piece.strip() and kind in ("tsv", "csv", "delimited"):
                header = _fields(piece, delimiter, quoted)
                label_key = _label_index(source, header, columns.get("label_column"))
                if label_key is None:  # positional columns: the first row is data
                    label_key = int(columns.get("label_column"))
                else:
                    out.write(piece)
                    continue
            if kind == "jsonl" and label_key is None and piece.strip():
                label_key = _json_label_key(source, number, piece, columns.get("label_column"))
            if number not in changes:
                out.write(piece)
                continue
            if quoted:
                pending = (number, [piece])
                continue
            out.write(_changed((number, [piece]), changes, kind, 0 if kind == "reference" else label_key, delimiter,
                               separator, quoted, source))
        if pending is not None:
            out.write(_changed(pending, changes, kind, label_key, delimiter, separator, quoted, source))


def _changed(record, changes, kind, label_key, delimiter, separator, quoted, source):
    """The record's text after its change: nothing (dropped) or the record with its new label."""
    number, pieces = record
    new = changes[number]
    if new is None:
        return ""
    text = "".join(pieces)
    ending = text[len(text.rstrip("\r\n")):]
    if kind == "jsonl":
        value = json.loads(text)
        old = value.get(label_key)
        value[label_key] = new if isinstance(new, str) or isinstance(old, list) else separator.join(new)
        return json.dumps(value, ensure_ascii=False) + ending
    label = new if isinstance(new, str) else separator.join(new)
    fields = _fields(text, delimiter, quoted)
    if label_key >= len(fields):
        raise UserError(f"{source}:{number}: has no field {label_key + 1} to relabel")
    fields[label_key] = label
    if not quoted:
        return delimiter.join(fields) + ending
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator=ending or "\n").writerow(fields)
    return buffer.getvalue()


def _fields(text, delimiter, quoted):
    if not quoted:
        return text.rstrip("\r\n").split(delimiter)
    return next(csv.reader(io.StringIO(text), delimiter=delimiter))


def _label_index(source, header, label_column):
    """The label's position in a header row; None when the columns are positions (no header)."""
    if label_column is not None and str(label_column).isdigit():
        return None
    names = [field.strip() for field in header]
    for name in ([label_column] if label_column else DEFAULT_LABEL_COLUMNS):
        if name in names:
            return names.index(name)
    raise UserError(f"{source}: no label column {label_column or 'label'} in its header: pass --train_fn the file "
                    "the out-of-fold probabilities were made from")


def _json_label_key(source, number, piece, label_column):
    keys = json.loads(piece).keys()
    for name in ([label_column] if label_column else DEFAULT_LABEL_COLUMNS):
        if name in keys:
            return name
    raise UserError(f"{source}:{number}: no label key {label_column or 'label'}")


def _parquet_copy(source, target, columns, changes):
    """Parquet: rows are numbered from 1; a dropped row goes, a relabelled one gets its new label."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pq.read_table(source)
    label_column = columns.get("label_column") or next(
        (name for name in DEFAULT_LABEL_COLUMNS if name in table.column_names), None)
    if label_column is None or label_column not in table.column_names:
        raise UserError(f"{source}: no label column {label_column or 'label'}")
    labels = table.column(label_column).to_pylist()
    for line, new in changes.items():
        if new is not None:
            labels[line - 1] = new if (isinstance(new, str) or isinstance(labels[line - 1], list)) else (
                (columns.get("label_separator") or ",").join(new))
    table = table.set_column(table.column_names.index(label_column), label_column, pa.array(labels))
    keep = [row for row in range(len(table)) if changes.get(row + 1, "") is not None]
    pq.write_table(table.take(pa.array(keep, type=pa.int64())), target)
