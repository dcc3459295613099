"""A corpus to classify, cut into shards: the input files of `classify_plm.py --input_fn`, each cut into
fixed ranges of lines (text files) or rows (Parquet), and the reader of one shard.

A shard is read on its own, from its byte range or row range, by whichever process or Ray actor
classifies it, with the readers training uses (data_load.readers: the same column flags, the same
`file:line` errors). Kinds of input, by extension and flags:
  lines      .txt (or any other extension) without column flags: one text a line, like classify_plm.py's
             stdin (`sentence<TAB>pair` for a pair model)
  reference  .tsv without column flags: training's `label<TAB>sentence[<TAB>pair]` (the label is not read)
  tsv        .tsv/.txt with --text_column/--text_pair_column: a header row, or columns by position
  csv, jsonl (.jsonl/.json), parquet

Imports no torch: the ONNX backend reads files through here too."""
import glob
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from data_load.readers import (SINGLE, column_keys, file_kind, file_rows, header_columns, line_examples,
                               row_examples, _reference_examples)
from utils.errors import UserError, first_line, located

SUFFIXES = (".txt", ".tsv", ".csv", ".jsonl", ".json", ".parquet")  # what a directory's files are read as
LINE_ENDS = re.compile(rb"\r\n|\r|\n")


@dataclass
class InputFile:
    """One input file: where, what kind, its identity (size, mtime, content digest) and its columns."""
    path: str
    kind: str
    size: int
    mtime_ns: int
    digest: str = ""
    columns: list | None = None  # table kinds: the column names (or positions) every shard reads with
    n_lines: int = 0  # lines (text) or rows (Parquet)

    def identity(self):
        return {"path": self.path, "size": self.size, "digest": self.digest}


@dataclass
class Shard:
    """Lines first_line.. of one input: bytes start..end of a text file, or rows start..end of a Parquet file."""
    index: int
    source: int  # index into the job's inputs
    start: int
    end: int
    first_line: int
    n_lines: int = 0

    def as_list(self):
        return [self.index, self.source, self.start, self.end, self.first_line, self.n_lines]


@dataclass
class Columns:
    """The column flags a shard is read with (options.parser.add_column_flags' --text_column/--text_pair_column)."""
    text: str | None = None
    pair: str | None = None
    keep: bool = False  # --keep_columns: each Example keeps its row's columns


def expand_inputs(pattern, output=None):
    """--input_fn: a file, a directory (its data files, recursively, in name order; names starting with
    `.` or `_` are skipped, as Spark and pyarrow skip them) or a glob. `output` (--output_fn) is never read
    as input: a directory or glob that holds it leaves its files out (an interrupted run's part files would
    otherwise be read back by the rerun), and an input inside it is refused."""
    files = _expand(pattern)
    if output is None:
        return files
    output = Path(output).resolve()
    inside = [path for path in files if path.resolve().is_relative_to(output)]
    if inside and (len(inside) == len(files) or Path(pattern).resolve().is_relative_to(output)):
        raise UserError(f"--output_fn {output}: it holds the input ({inside[0]}); choose an --output_fn outside "
                        "the input")
    return [path for path in files if path not in inside]


def _expand(pattern):
    path = Path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
        if not files:
            raise UserError(f"--input_fn {pattern}: no data files in this directory ({', '.join(SUFFIXES)})")
        return files
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"--input_fn {pattern}: no file matches this pattern")
        return files
    raise UserError(f"--input_fn {pattern}: no such file or directory")


def input_kind(path, columns):
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix not in (".tsv", ".csv", ".jsonl", ".json") and not (columns.text or columns.pair):
        return "lines"
    return file_kind(path, columns.text, columns.pair)


def stat_input(path, columns):
    try:
        stat = os.stat(path)
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror}") from None
    return InputFile(str(path), input_kind(path, columns), stat.st_size, stat.st_mtime_ns)


def plan_input(source, index, shard_lines, columns, first_shard):
    """Fill in the file's digest, columns and line count, and cut it into shards of shard_lines lines
    (rows); returns the shards, numbered from first_shard."""
    if source.kind == "parquet":
        return _plan_parquet(source, index, shard_lines, columns, first_shard)
    data_line = 1
    if source.kind in ("tsv", "csv", "jsonl"):
        first = next(iter(file_rows(source.path, source.kind)), None)
        if first is None:
            raise UserError(f"{source.path}: the file is empty")
        source.columns, is_header = header_columns(source.path, first, columns.text, columns.pair)
        column_keys(source.path, source.columns, columns.text, columns.pair, None, labelled=False)  # flags checked now
        if is_header:
            data_line = first[0] + 1
    cuts = _csv_cuts if source.kind == "csv" else _line_cuts
    shards, start, start_line = [], None, None
    digest = hashlib.blake2b(digest_size=20)
    for position, line, raw in cuts(source.path, digest):  # every place a shard may start: a row's first byte
        if line < data_line:
            continue
        if start is None:
            start, start_line = position, line
        elif line - start_line >= shard_lines:
            shards.append(Shard(first_shard + len(shards), index, start, position, start_line, line - start_line))
            start, start_line = position, line
    if start is not None and line > start_line:
        shards.append(Shard(first_shard + len(shards), index, start, source.size, start_line, line - start_line))
    source.digest, source.n_lines = digest.hexdigest(), sum(shard.n_lines for shard in shards)
    return shards


def _line_cuts(path, digest):
    """(byte offset, line number) of every line start, and the end: (size, last line + 1). Lines are
    counted as data_load.readers.text_lines counts them (a lone \\r ends a line too)."""
    position, line = 0, 1
    with open(path, "rb") as f:
        for raw in f:
            yield position, line, raw
            digest.update(raw)
            position += len(raw)
            line += 1 if b"\r" not in raw else len(LINE_ENDS.findall(raw)) + (not raw.endswith((b"\n", b"\r")))
    yield position, line, b""


def _csv_cuts(path, digest):
    """Like _line_cuts, but only where a CSV row starts (a quoted field may hold line breaks)."""
    import csv
    ends = []  # (byte offset, line) after each physical line the csv reader has taken

    def pieces():
        for position, line, raw in _line_cuts(path, digest):
            if raw:
                ends.append((position + len(raw), line + 1))
                yield raw.decode("utf-8-sig" if position == 0 else "utf-8", errors="replace")

    yield 0, 1, b""
    reader = csv.reader(pieces())
    try:
        for _ in reader:
            position, line = ends[-1]
            yield position, line, b""
            ends.clear()
    except csv.Error as error:
        raise located(path, reader.line_num, f"malformed CSV: {error}") from None


def _plan_parquet(source, index, shard_lines, columns, first_shard):
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(source.path)
    except Exception as error:  # pyarrow's ArrowInvalid for a file that is not Parquet
        raise UserError(f"{source.path}: not a readable Parquet file ({first_line(error)})") from None
    source.columns = parquet.schema_arrow.names
    column_keys(source.path, source.columns, columns.text, columns.pair, None, labelled=False)
    source.n_lines = parquet.metadata.num_rows
    source.digest = _parquet_digest(source.path, source.size)
    return [Shard(first_shard + i, index, start, min(start + shard_lines, source.n_lines), start + 1,
                  min(shard_lines, source.n_lines - start))
            for i, start in enumerate(range(0, source.n_lines, shard_lines))]


def _parquet_digest(path, size):
    """A Parquet file's identity without reading its data: a hash of its footer (the schema, and every
    column chunk's offset, size and statistics), which any change to the rows changes."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 8))
        tail = f.read(8)
        footer = int.from_bytes(tail[:4], "little") if len(tail) == 8 and tail[4:] == b"PAR1" else 0
        f.seek(max(0, size - 8 - footer))
        return hashlib.blake2b(f.read() + str(size).encode(), digest_size=20).hexdigest()


def shard_examples(source, shard, columns, pairs, stats):
    """The Examples of one shard (rows with an empty text skipped and counted in stats["n_empty"])."""
    span = (shard.start, shard.end, shard.first_line)
    if source.kind == "lines":
        return line_examples(source.path, pairs, span, columns.keep, stats)
    if source.kind == "reference":
        return _reference_examples(source.path, stats, SINGLE, span, labelled=False, keep_record=columns.keep)
    keys = column_keys(source.path, source.columns, columns.text, columns.pair, None, labelled=False)
    if source.kind == "parquet":
        rows = _parquet_rows(source.path, shard, None if columns.keep else [k for k in (keys["text"], keys["pair"])
                                                                              if k is not None])
    else:
        rows = file_rows(source.path, source.kind, span)
    return row_examples(source.path, rows, source.columns, keys, SINGLE, stats, keep_record=columns.keep)


def file_examples(path, columns, pairs, stats):
    """Every Example of one input file, read as file mode reads a shard (one shard spanning the file):
    the unlabelled text distillation trains on (distill_plm.py --unlabeled_fn)."""
    source = stat_input(path, columns)
    for shard in plan_input(source, 0, sys.maxsize, columns, 0):
        yield from shard_examples(source, shard, columns, pairs, stats)


def _parquet_rows(path, shard, names):
    """(row number, record) of rows shard.start..end, reading only the row groups that hold them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    row = shard.start
    try:
        parquet = pq.ParquetFile(path)
        groups, starts, first = [], [], 0
        for group in range(parquet.metadata.num_row_groups):
            n = parquet.metadata.row_group(group).num_rows
            if first < shard.end and first + n > shard.start:
                groups.append(group)
                starts.append(first)
            first += n
        if not groups:
            return
        row = starts[0]  # rows are counted from the first group's first row
        for batch in parquet.iter_batches(batch_size=8192, row_groups=groups, columns=names):
            records = batch.to_pylist() if names is None or len(names) else [{}] * batch.num_rows
            for record in records:
                row += 1
                if row > shard.end:
                    return
                if row > shard.start:
                    yield row, record
    except (OSError, pa.ArrowException) as error:  # a damaged page or column
        raise located(path, row + 1, f"cannot read this row of the Parquet file: {first_line(error)}") from None
