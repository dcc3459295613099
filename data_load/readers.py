"""Read labelled sentences from TSV, CSV and JSONL files.

Formats, chosen by file extension and flags:
  * reference format (default for .tsv/.txt without column flags): `label<TAB>sentence`
    or `label<TAB>sentence<TAB>sentence_pair`, no header;
  * TSV with a header (.tsv/.txt when --text_column/--label_column is given): fields are
    split on tabs exactly, quotes are kept as text (NSMC and hate-speech files need that);
  * CSV with a header (.csv): standard quoting, so quoted fields may hold commas, tabs, newlines;
  * JSONL (.jsonl/.json): one JSON object a line.
A column given as a number (`--label_column 1`) is a 0-based position in a file without header.
"""
import csv
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError, located
from utils.log import log

DEFAULT_TEXT_COLUMNS = ("text", "sentence", "document", "review", "comments", "sentence1")
DEFAULT_PAIR_COLUMNS = ("text_pair", "sentence2")
DEFAULT_LABEL_COLUMNS = ("label", "labels", "class")
# a line and its ending: \r\n, a lone \r or \n (a lone \r ends a line, as in universal newlines)
LINE_PIECE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


@dataclass
class Example:
    text: str
    label: str | list | None = None  # a class name; with multi-label data, a list of them (maybe empty)
    text_pair: str | None = None
    line: int = 0  # 1-based line in the source file, for error messages
    record: dict | None = None  # the row's columns, when the reader is asked to keep them (classify --keep_columns)


@dataclass(frozen=True)
class Labeling:
    """How a row's label is read. One class (the default), or several (--multi_label): a field holding
    them with a separator (`joy,love`), a JSON list, or one 0/1 column per label (--label_columns);
    integer ids can be given names (--label_names_fn, e.g. GoEmotions' labels.txt)."""
    multi: bool = False
    separator: str = ","
    columns: tuple | None = None  # --label_columns as given: names, positions or `first:last` ranges
    names: tuple | None = None  # id -> name
    numbers: bool = False  # --regression: a label is a number (a JSON or Parquet 3.8 is kept, not refused)

    def key(self):
        return [self.multi, self.separator, self.columns, self.names, *(["numbers"] if self.numbers else [])]

    @classmethod
    def from_flags(cls, multi_label=False, separator=None, columns=None, names_fn=None, label_column=None):
        """--multi_label, --label_separator, --label_columns (`a,b` or `first:last`), --label_names_fn."""
        if columns and label_column:
            raise UserError("--label_column and --label_columns both given: one label column, or one 0/1 column "
                            "per label")
        return cls(multi=bool(multi_label or columns), separator=separator or ",",
                   columns=tuple(part.strip() for part in columns.split(",")) if columns else None,
                   names=read_label_names(names_fn) if names_fn else None)


SINGLE = Labeling()


def read_examples(path, text_column=None, text_pair_column=None, label_column=None, labeling=SINGLE, delimiter=None):
    """A whole labelled file as a list of Examples (small files, tests); large files go through
    iter_examples into Arrow (data_load.sources). Raises UserError with `file:line` on bad input."""
    stats = {}
    examples = list(iter_examples(path, text_column, text_pair_column, label_column, stats, labeling, delimiter))
    warn_empty(path, stats["n_empty"])
    return examples


def iter_examples(path, text_column=None, text_pair_column=None, label_column=None, stats=None, labeling=SINGLE,
                  delimiter=None):
    """Examples one at a time, validated as they stream (the file is never held in memory).
    `delimiter` (--delimiter, a character) reads a delimited file whatever its extension: quoted CSV
    fields for any separator but a tab, which splits exactly (quotes kept as text, as in .tsv files).

    Raises UserError with `file:line` on the first bad row; `stats["n_empty"]` counts rows skipped
    for an empty text (the caller warns once)."""
    path = Path(path)
    stats = {} if stats is None else stats
    kind = file_kind(path, text_column, text_pair_column, label_column, labeling, delimiter)
    if kind == "reference":
        yield from _reference_examples(path, stats, labeling)
        return
    yield from examples_from_rows(path, file_rows(path, kind, delimiter=delimiter), text_column, text_pair_column,
                                  label_column, stats, labeling=labeling, extra_fields=kind == "delimited")


def file_kind(path, text_column=None, text_pair_column=None, label_column=None, labeling=SINGLE, delimiter=None):
    """How a text file is read: jsonl, csv, tsv (a table with a header or column positions), delimited
    (--delimiter, whatever the extension), or reference (`label<TAB>sentence`: .tsv/.txt without column flags)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):  # JSON lines have no delimiter: --delimiter is for the other files
        return "jsonl"
    if delimiter:
        return "delimited"
    if suffix == ".csv":
        return "csv"
    if text_column or label_column or text_pair_column or labeling.columns:
        return "tsv"
    return "reference"


def file_rows(path, kind, span=None, delimiter=None):
    """(line, row) of a jsonl, csv, tsv or delimited file (rows: field lists, or dicts for JSONL); span: a
    byte range, see text_lines."""
    if kind == "jsonl":
        return _jsonl_rows(path, span)
    if kind == "delimited":
        return _table_rows(path, delimiter=delimiter, quoted=delimiter != "\t", span=span)
    return _table_rows(path, delimiter="," if kind == "csv" else "\t", quoted=kind == "csv", span=span)


def examples_from_rows(path, rows, text_column, text_pair_column, label_column, stats, columns=None,
                       labeling=SINGLE, extra_fields=False):
    """Examples from (line, row) pairs: rows are field lists (the first may be a header) or dicts
    (JSONL objects, Arrow records; `columns` names their keys when known in advance). extra_fields: rows
    under a header may have more fields than it (--delimiter: the file as the user has it)."""
    rows = iter(rows)
    stats["n_empty"] = 0
    first = next(rows, None)
    if first is None and columns is None:
        raise UserError(f"{path}: the file is empty")
    if columns is not None:
        pending = [first] if first is not None else []
    else:
        columns, is_header = header_columns(path, first, text_column, text_pair_column, label_column, labeling)
        pending = [] if is_header else [first]
    keys = column_keys(path, columns, text_column, text_pair_column, label_column, labeling, stats)
    n_examples = 0
    for example in row_examples(path, itertools.chain(pending, rows), columns, keys, labeling, stats,
                                extra_fields=extra_fields):
        n_examples += 1
        yield example
    if not n_examples:
        raise UserError(f"{path}: no examples found (only a header, or every text is empty)")


def header_columns(path, first, text_column=None, text_pair_column=None, label_column=None, labeling=SINGLE):
    """(columns, whether the first row is a header) of a file whose first row is `first` (line, row):
    a JSONL object's keys, a header row's names, or positions 0..n-1."""
    if isinstance(first[1], dict):  # JSONL: the first object's keys name the columns
        return list(first[1]), False
    if _is_positional(text_column, text_pair_column, label_column, *(labeling.columns or ())):
        if _is_header(first[1], ()):
            raise located(path, first[0], f"looks like a header ({', '.join(f.strip() for f in first[1])}), but the "
                                          "columns are given by position: name them instead, e.g. --label_column "
                                          "label, so the header is not read as an example")
        return list(range(len(first[1]))), False
    if not _is_header(first[1], (text_column, text_pair_column, label_column, *_named(labeling.columns))):
        return list(range(len(first[1]))), False
    return first[1], True


def column_keys(path, columns, text_column, text_pair_column, label_column, labeling=SINGLE, stats=None,
                labelled=True):
    """Which of `columns` hold the text, the pair and the label(s), as a dict for row_examples; a
    position picks the column by its place. labelled=False: text and pair only (classifying)."""
    stats = {} if stats is None else stats
    text_column, text_pair_column, label_column = (
        columns[int(c)] if c is not None and str(c).isdigit() and int(c) < len(columns) else c
        for c in (text_column, text_pair_column, label_column))
    text_key = _pick_column(path, columns, text_column, DEFAULT_TEXT_COLUMNS, "--text_column")
    pair_key = (_pick_column(path, columns, text_pair_column, (), "--text_pair_column")
                if text_pair_column is not None else None)
    label_key, label_keys = None, None
    roles = {"--text_column": text_key, "--text_pair_column": pair_key}
    if not labelled:
        pass
    elif labeling.columns:  # one 0/1 column per label
        label_keys = _label_columns(path, columns, labeling.columns)
        stats["declared_labels"] = [str(key) for key in label_keys]
        roles.update({f"--label_columns ({key})": key for key in label_keys})
    else:
        label_key = _pick_column(path, columns, label_column, DEFAULT_LABEL_COLUMNS, "--label_column")
        roles["--label_column"] = label_key
    _check_distinct(path, roles)
    stats["has_pairs"] = pair_key is not None
    return {"text": text_key, "pair": pair_key, "label": label_key, "labels": label_keys, "labelled": labelled}


def row_examples(path, rows, columns, keys, labeling=SINGLE, stats=None, keep_record=False, extra_fields=False):
    """Examples of (line, row) pairs with known columns and keys (column_keys); rows with an empty
    text are skipped and counted in stats["n_empty"]. keep_record: each Example keeps its row's columns."""
    stats = {} if stats is None else stats
    stats.setdefault("n_empty", 0)
    text_key, pair_key, label_key, label_keys = keys["text"], keys["pair"], keys["label"], keys["labels"]
    for line, row in rows:
        record = _as_record(path, line, row, columns, extra_fields)
        text_value = _field(path, line, record, text_key)
        if not text_value.strip():
            stats["n_empty"] += 1
            continue
        example = Example(text=text_value, line=line, record=record if keep_record else None)
        if pair_key is not None:
            example.text_pair = _field(path, line, record, pair_key)
        if not keys["labelled"]:
            pass
        elif label_keys:
            example.label = _flagged_labels(path, line, record, label_keys)
        elif labeling.multi:
            example.label = _label_set(path, line, record[label_key] if label_key in record else _missing(
                path, line, label_key), label_key, labeling)
        else:
            example.label = _name_of(path, line, _label(path, line, record, label_key, labeling.numbers),
                                     labeling.names)
            if not example.label:
                raise located(path, line, f"empty value in label column '{label_key}': fill it in or remove the row")
        yield example


def text_lines(path, keep_ends=False, span=None):
    """(line number, line) of a UTF-8 file (a BOM is dropped), read as a stream; any line endings
    (\\n, \\r\\n, a lone \\r) end a line. Binary or mis-encoded files are errors naming the line.
    span (start, end, first line): only the lines in bytes start..end, numbered from `first line`;
    start and end are at line starts (classify_plm.py's shards, batch/job.py)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a data file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror}") from None
    start, end, number = span if span else (0, None, 1)
    number -= 1
    with f:
        f.seek(start)
        position = start
        for raw in f:
            if end is not None and position >= end:
                break
            if b"\x00" in raw:
                raise located(path, number + 1, "contains a NUL byte: this looks like a binary file, not UTF-8 text")
            try:
                text = raw.decode("utf-8-sig" if position == 0 else "utf-8")
                position += len(raw)
            except UnicodeDecodeError:
                raise located(path, number + 1, "is not valid UTF-8: convert the file, e.g. "
                                                f"`iconv -f cp949 -t utf-8 {path} > fixed.tsv`") from None
            for piece in LINE_PIECE.findall(text):
                number += 1
                yield number, piece if keep_ends else piece.rstrip("\r\n")


def _reference_examples(path, stats, labeling=SINGLE, span=None, labelled=True, keep_record=False):
    """`label<TAB>sentence[<TAB>sentence_pair]` without header; blank lines are skipped. labelled=False
    (classifying): the label is not read; span: a byte range (text_lines), which may hold no example."""
    n_examples = stats["n_empty"] = 0
    for line, raw in text_lines(path, span=span):
        if not raw.strip():
            continue
        fields = raw.split("\t")
        if len(fields) < 2:
            raise located(path, line, "no tab found: expected `label<TAB>sentence` "
                                      "(or pass --text_column/--label_column for a file with a header)")
        if len(fields) > 3:
            raise located(path, line, f"{len(fields)} tab-separated fields, expected 2 "
                                      "(`label<TAB>sentence`) or 3 (`label<TAB>sentence<TAB>pair`)")
        label = fields[0].strip()
        if not n_examples and (span is None or span[0] == 0) and label.lower() in DEFAULT_LABEL_COLUMNS \
                and fields[1].strip().lower() in DEFAULT_TEXT_COLUMNS:
            raise located(path, line, f"looks like a header ({raw.strip()!r}), not an example: pass --label_column "
                                      f"{label} --text_column {fields[1].strip()} to read the file by its header")
        if not labelled:
            if fields[1].strip():
                n_examples += 1
                record = dict(zip(("label", "text", "text_pair"), fields)) if keep_record else None
                yield Example(text=fields[1], text_pair=fields[2] if len(fields) == 3 else None, line=line,
                              record=record)
            else:
                stats["n_empty"] += 1
            continue
        if not label and not labeling.multi:
            raise located(path, line, "empty label before the tab")
        if not fields[1].strip():
            stats["n_empty"] += 1
            continue
        if len(fields) == 3:
            stats["has_pairs"] = True
        n_examples += 1
        label = _label_set(path, line, label, "label", labeling) if labeling.multi else _name_of(
            path, line, label, labeling.names)
        yield Example(text=fields[1], label=label, text_pair=fields[2] if len(fields) == 3 else None, line=line)
    if not n_examples and span is None:
        raise UserError(f"{path}: no examples found: the file is empty")


def _table_rows(path, delimiter, quoted, span=None):
    """(line, fields) for each non-blank row of a delimited file."""
    if quoted:
        lines = text_lines(path, keep_ends=True, span=span)
        offset = span[2] - 1 if span else 0
        reader = csv.reader((piece for _, piece in lines), delimiter=delimiter)
        try:
            start = 1
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield start + offset, fields
                start = reader.line_num + 1
        except csv.Error as error:
            raise located(path, reader.line_num + offset, f"malformed CSV: {error}") from None
    else:
        for line, raw in text_lines(path, span=span):
            if raw.strip():
                yield line, raw.split(delimiter)


def _jsonl_rows(path, span=None):
    for line, raw in text_lines(path, span=span):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise located(path, line, f"invalid JSON ({error.msg}): expected one JSON object a line") from None
        if not isinstance(record, dict):
            raise located(path, line, "expected a JSON object like {\"text\": ..., \"label\": ...}")
        yield line, record


def line_examples(path, pairs=False, span=None, keep_record=False, stats=None):
    """One text a line (classify_plm.py's stdin format, as a file): blank lines are skipped; a pair
    model reads `sentence<TAB>sentence_pair` (split_pair)."""
    stats = {} if stats is None else stats
    stats.setdefault("n_empty", 0)
    for line, raw in text_lines(path, span=span):
        if not raw.strip():
            stats["n_empty"] += 1
            continue
        text, pair = split_pair(raw, pairs)
        yield Example(text=text, text_pair=pair, line=line, record={"text": raw} if keep_record else None)


def split_pair(line, pairs):
    """(text, pair): a pair model reads `sentence<TAB>sentence_pair` (an empty pair when there is no tab)."""
    if pairs and "\t" in line:
        text, pair = line.split("\t", 1)
        return text, pair
    return line, "" if pairs else None


def _is_positional(*columns):
    return any(column is not None and str(column).isdigit() for column in columns)


def _is_header(fields, asked):
    """A first row is a header if it names an asked-for or a conventional column."""
    names = {field.strip() for field in fields}
    wanted = {c for c in asked if c} | set(DEFAULT_TEXT_COLUMNS) | set(DEFAULT_LABEL_COLUMNS)
    return bool(names & wanted)


def _pick_column(path, columns, asked, defaults, flag):
    if asked is not None and str(asked).isdigit():
        return int(asked)
    if asked is not None:
        if asked not in columns:
            raise UserError(f"{path}: no column '{asked}' (columns: {', '.join(map(str, columns))}); fix {flag}")
        return asked
    for name in defaults:
        if name in columns:
            return name
    raise UserError(f"{path}: cannot tell which column to use; pass {flag} "
                    f"(columns: {', '.join(map(str, columns))})")


def _as_record(path, line, row, columns, extra_fields=False):
    """A row's fields by column. Columns given by position read rows of any length that have the fields
    asked for (STS-B's attribution fields on some rows are ignored). Under a header, empty trailing
    fields are ignored, and so are others with extra_fields (--delimiter); without it, a row with more
    non-empty fields than the header is refused: its text most likely holds the delimiter, and reading on
    would cut it silently."""
    if isinstance(row, dict):
        return row
    positional = columns and isinstance(columns[0], int)
    extra = not extra_fields and any(field.strip() for field in row[len(columns):])
    if not positional and (len(row) < len(columns) or extra):
        hint = ("" if len(row) < len(columns) else
                ": a field holds the delimiter? quote it (CSV), or give the columns by position")
        raise located(path, line, f"{len(row)} fields, but the first row has {len(columns)}{hint}")
    return dict(enumerate(row)) if positional else dict(zip(columns, row))


def _field(path, line, record, key):
    if key not in record:
        if isinstance(key, int):
            raise located(path, line, f"{len(record)} fields: there is no field {key} (0-based) here")
        raise located(path, line, f"no field '{key}'")
    value = record[key]
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # JSON escapes can spell lone surrogates ("\\ud800"), which are not text
        except UnicodeEncodeError:
            raise located(path, line, f"field '{key}' holds an unpaired surrogate (\\ud800-\\udfff), which is "
                                      "not text: fix the escape in the file") from None
        return value
    if isinstance(value, (bytes, bytearray)):
        raise located(path, line, f"field '{key}' holds binary data, not text: store it as a string column")
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (dict, list)) else str(value)


def _label(path, line, record, key, numbers=False):
    """A class label as text. JSON values are checked: 1 and 1.0 are the label "1"; true, 0.5, a list
    or an object are refused rather than turned into classes of their own (numbers: 0.5 is "0.5")."""
    if key not in record:
        raise located(path, line, f"no field '{key}'")
    value = record[key]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    if isinstance(value, bool) or isinstance(value, (list, dict)) or (
            isinstance(value, float) and not value.is_integer()):
        kind = ("a list: one example has one label here; for several labels per example pass --multi_label"
                if isinstance(value, list) else f"{json.dumps(value, default=str)}, which is not a class name or id")
        raise located(path, line, f"label '{key}' is {kind}")
    if isinstance(value, (bytes, bytearray)):
        raise located(path, line, f"label '{key}' holds binary data, not a class name or id")
    if isinstance(value, float):
        value = int(value)
    return "" if value is None else _field(path, line, {key: str(value)}, key).strip()


def _missing(path, line, key):
    raise located(path, line, f"no field '{key}'")


def _label_set(path, line, value, key, labeling):
    """The labels of one multi-label example: a JSON list (also as the text of a TSV/CSV field:
    `["positive", "long"]`), or a field split at the separator; integer ids named by --label_names_fn.
    No labels at all is allowed (none of the classes applies)."""
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise located(path, line, f"label '{key}' looks like a JSON list but is not one ({value.strip()[:60]}): "
                                      'write it as ["a", "b"], or as a,b with --label_separator') from None
    if value is None:
        parts = []
    elif isinstance(value, list):
        if any(isinstance(item, (list, dict)) for item in value):
            raise located(path, line, f"label '{key}' is a nested list: a multi-label example's labels are one "
                                      'flat list of class names, e.g. ["positive", "long"]')
        parts = [_label(path, line, {key: item}, key) for item in value]
    else:
        text = _label(path, line, {key: value}, key)
        parts = [part.strip() for part in text.split(labeling.separator)] if text else []
    labels = []
    for part in parts:
        part = _name_of(path, line, part, labeling.names)
        if part and part not in labels:
            labels.append(part)
    return labels


def _name_of(path, line, label, names):
    """--label_names_fn: the name of an integer id (the label itself without that flag)."""
    if names is None or not label:
        return label
    if not label.isdigit() or int(label) >= len(names):
        raise located(path, line, f"label {label!r} is not an id of --label_names_fn (0 to {len(names) - 1})")
    return names[int(label)]


def read_label_names(path):
    """--label_names_fn: one name a line, line i naming class id i."""
    names = [line for _, line in text_lines(path)]
    while names and not names[-1].strip():
        names.pop()
    for number, name in enumerate(names, start=1):
        if not name.strip():
            raise located(path, number, "empty line: every line names the class whose id is its line number - 1")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: a name occurs twice: two ids would be one class")
    return tuple(name.strip() for name in names)


def _flagged_labels(path, line, record, keys):
    """--label_columns: the names of the columns holding 1 (each must hold 0 or 1)."""
    labels = []
    for key in keys:
        value = record.get(key)
        flag = value if isinstance(value, (bool, int)) else str(value).strip()
        if flag in (1, "1", True, "1.0", "true", "True"):
            labels.append(str(key))
        elif flag not in (0, "0", False, "0.0", "false", "False"):
            raise located(path, line, f"label column '{key}' holds {value!r}: expected 0 or 1")
    return labels


def _named(columns):
    return [c for c in (columns or ()) if c is not None and ":" not in str(c) and not str(c).isdigit()]


def _label_columns(path, columns, asked):
    """--label_columns: names, 0-based positions, or `first:last` ranges of either (both ends included)."""
    names = [str(c) for c in columns]

    def position(item):
        item = item.strip()
        if item.isdigit() and not item in names:
            if int(item) >= len(columns):
                raise UserError(f"{path}: --label_columns {item}: there are only {len(columns)} columns")
            return int(item)
        if item not in names:
            raise UserError(f"{path}: no column '{item}' (columns: {', '.join(names)}); fix --label_columns")
        return names.index(item)

    keys = []
    for item in asked:
        first, _, last = str(item).partition(":")
        start, end = position(first), position(last) if last else position(first)
        if end < start:
            raise UserError(f"{path}: --label_columns {item}: the range runs backwards")
        keys += [columns[i] for i in range(start, end + 1) if columns[i] not in keys]
    if len(keys) < 2:
        raise UserError(f"{path}: --label_columns names {len(keys)} column; multi-label data needs at least two")
    return keys


def _check_distinct(path, keys):
    """Two roles given one column (e.g. --label_column naming the text) would train on nonsense."""
    seen = {}
    for flag, key in keys.items():
        if key is None:
            continue
        if key in seen:
            raise UserError(f"{path}: {seen[key]} and {flag} both name column {key!r}: give each its own column")
        seen[key] = flag


def warn_empty(path, n_empty):
    if n_empty:
        log.warning(f"{path}: skipped {n_empty} row(s) with empty text")
