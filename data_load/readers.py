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
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError, located

DEFAULT_TEXT_COLUMNS = ("text", "sentence", "document", "review", "comments", "sentence1")
DEFAULT_PAIR_COLUMNS = ("text_pair", "sentence2")
DEFAULT_LABEL_COLUMNS = ("label", "labels", "class")
LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass
class Example:
    text: str
    label: str | None = None
    text_pair: str | None = None
    line: int = 0  # 1-based line in the source file, for error messages


def read_examples(path, text_column=None, text_pair_column=None, label_column=None):
    """Read a whole labelled file into a list of Examples. Raises UserError with `file:line` on bad input."""
    path = Path(path)
    text = decode_file(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(path, text)
    elif suffix == ".csv" or text_column or label_column or text_pair_column:
        rows = _table_rows(path, text, delimiter="," if suffix == ".csv" else "\t", quoted=suffix == ".csv")
    else:
        return _reference_examples(path, text)

    rows = list(rows)
    if not rows:
        raise UserError(f"{path}: the file is empty")
    _, first = rows[0]
    if isinstance(first, dict):  # JSONL: the first object's keys name the columns
        columns = list(first)
    elif _is_positional(text_column, text_pair_column, label_column):
        if _is_header(first, ()):
            raise located(path, rows[0][0], f"looks like a header ({', '.join(f.strip() for f in first)}), but the "
                                            "columns are given by position: name them instead, e.g. --label_column "
                                            "label, so the header is not read as an example")
        columns = list(range(len(first)))
    elif not _is_header(first, (text_column, text_pair_column, label_column)):
        columns = list(range(len(first)))
    else:
        columns, rows = first, rows[1:]

    text_key = _pick_column(path, columns, text_column, DEFAULT_TEXT_COLUMNS, "--text_column")
    pair_key = (_pick_column(path, columns, text_pair_column, (), "--text_pair_column")
                if text_pair_column else None)
    label_key = _pick_column(path, columns, label_column, DEFAULT_LABEL_COLUMNS, "--label_column")
    _check_distinct(path, {"--text_column": text_key, "--text_pair_column": pair_key, "--label_column": label_key})

    examples, n_empty = [], 0
    for line, row in rows:
        record = _as_record(path, line, row, columns)
        text_value = _field(path, line, record, text_key)
        if not text_value.strip():
            n_empty += 1
            continue
        example = Example(text=text_value, line=line)
        if pair_key is not None:
            example.text_pair = _field(path, line, record, pair_key)
        example.label = _label(path, line, record, label_key)
        if not example.label:
            raise located(path, line, f"empty value in label column '{label_key}': fill it in or remove the row")
        examples.append(example)
    _warn_empty(path, n_empty)
    if not examples:
        raise UserError(f"{path}: no examples found (only a header, or every text is empty)")
    return examples


def decode_file(path):
    """The file as text: UTF-8 (a BOM is dropped), any line endings. Binary or mis-encoded files are errors."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a data file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror}") from None
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise located(path, line, "contains a NUL byte: this looks like a binary file, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise located(path, line, "is not valid UTF-8: convert the file, e.g. "
                                  f"`iconv -f cp949 -t utf-8 {path} > fixed.tsv`") from None


def _reference_examples(path, text):
    """`label<TAB>sentence[<TAB>sentence_pair]` without header; blank lines are skipped."""
    examples, n_empty = [], 0
    for line, raw in enumerate(LINE_BREAK.split(text), start=1):
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
        if not label:
            raise located(path, line, "empty label before the tab")
        if not examples and label.lower() in DEFAULT_LABEL_COLUMNS and fields[1].strip().lower() in DEFAULT_TEXT_COLUMNS:
            raise located(path, line, f"looks like a header ({raw.strip()!r}), not an example: pass --label_column "
                                      f"{label} --text_column {fields[1].strip()} to read the file by its header")
        if not fields[1].strip():
            n_empty += 1
            continue
        examples.append(Example(text=fields[1], label=label,
                                text_pair=fields[2] if len(fields) == 3 else None, line=line))
    _warn_empty(path, n_empty)
    if not examples:
        raise UserError(f"{path}: no examples found: the file is empty")
    return examples


def _table_rows(path, text, delimiter, quoted):
    """(line, fields) for each non-blank row of a delimited file."""
    if quoted:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            start = 1
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield start, fields
                start = reader.line_num + 1
        except csv.Error as error:
            raise located(path, reader.line_num, f"malformed CSV: {error}") from None
    else:
        for line, raw in enumerate(LINE_BREAK.split(text), start=1):
            if raw.strip():
                yield line, raw.split(delimiter)


def _jsonl_rows(path, text):
    for line, raw in enumerate(LINE_BREAK.split(text), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise located(path, line, f"invalid JSON ({error.msg}): expected one JSON object a line") from None
        if not isinstance(record, dict):
            raise located(path, line, "expected a JSON object like {\"text\": ..., \"label\": ...}")
        yield line, record


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


def _as_record(path, line, row, columns):
    if isinstance(row, dict):
        return row
    if len(row) != len(columns):
        raise located(path, line, f"{len(row)} fields, but the first row has {len(columns)}")
    return dict(zip(columns, row))


def _field(path, line, record, key):
    if key not in record:
        raise located(path, line, f"no field '{key}'")
    value = record[key]
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _label(path, line, record, key):
    """A class label as text. JSON values are checked: 1 and 1.0 are the label "1"; true, 0.5, a list
    or an object are refused rather than turned into classes of their own."""
    if key not in record:
        raise located(path, line, f"no field '{key}'")
    value = record[key]
    if isinstance(value, bool) or isinstance(value, (list, dict)) or (
            isinstance(value, float) and not value.is_integer()):
        kind = ("a list: one example has one label here (multi-label data is not supported)"
                if isinstance(value, list) else f"{json.dumps(value)}, which is not a class name or id")
        raise located(path, line, f"label '{key}' is {kind}")
    if isinstance(value, float):
        value = int(value)
    return "" if value is None else str(value).strip()


def _check_distinct(path, keys):
    """Two roles given one column (e.g. --label_column naming the text) would train on nonsense."""
    seen = {}
    for flag, key in keys.items():
        if key is None:
            continue
        if key in seen:
            raise UserError(f"{path}: {seen[key]} and {flag} both name column {key!r}: give each its own column")
        seen[key] = flag


def _warn_empty(path, n_empty):
    if n_empty:
        print(f"warning: {path}: skipped {n_empty} row(s) with empty text", file=sys.stderr)
