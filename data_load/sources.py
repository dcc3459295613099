"""Every input, parsed once into one Arrow table: `text`, `text_pair`, `label` (text), `line`.

Sources: a TSV/CSV/JSONL file (data_load.readers), a Parquet file, a directory written by
`Dataset.save_to_disk`/`DatasetDict.save_to_disk`, or a 🤗 hub dataset (`--dataset_name`). Rows are
validated as they stream (the whole file is never in memory as Python objects) and written in
batches to a memory-mapped Arrow file in the cache, keyed by the data's content and the column
flags, so a second run on the same data reads nothing but that file."""
import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path

from data_load.cache import build_entry, build_lock, cache_root, content_key, read_meta, write_meta
from data_load.readers import DEFAULT_LABEL_COLUMNS, SINGLE, examples_from_rows, iter_examples, warn_empty
from utils.errors import UserError, first_line, located
from utils.files import file_digest
from utils.log import log

WRITE_BATCH = 10_000  # rows per Arrow record batch: ~1 MB of text, few Python objects alive at once
VALID_SPLIT_NAMES = ("validation", "valid", "dev")


@dataclass
class Source:
    """One input split before parsing: what messages call it, what its content hash is, and how to
    read it as Examples."""
    name: str  # the file, or `directory[split]` / `hub-id[split]`, as error messages show it
    digest: str  # content identity: a file hash, or a saved/hub dataset's fingerprint
    kind: str  # text, parquet, arrow, or unlabelled (texts without labels, read as classify_plm.py reads files)
    dataset: object = None  # the datasets.Dataset of an arrow source
    pairs: bool = False  # unlabelled: a line without column flags is `sentence<TAB>pair`

    def examples(self, columns, stats, labeling, delimiter=None):
        text_column, pair_column, label_column = columns
        if self.kind == "text":
            return iter_examples(self.name, text_column, pair_column, label_column, stats, labeling, delimiter)
        if self.kind == "unlabelled":
            from data_load.shards import Columns, file_examples
            return file_examples(self.name, Columns(text_column, pair_column), self.pairs, stats)
        records, names = (_parquet_records(self.name) if self.kind == "parquet"
                          else _arrow_records(self.dataset, self.name))
        return examples_from_rows(self.name, records, text_column, pair_column, label_column, stats, columns=names,
                                  labeling=labeling)


def file_source(path):
    """A data file or a save_to_disk directory given as --train_fn/--valid_fn/--test_fn; a
    DatasetDict directory yields its splits as {name: Source}."""
    path = Path(path)
    if path.is_dir():
        return _saved_sources(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        digest = file_digest(path)
    except OSError as error:
        raise UserError(f"{path}: cannot read: {error.strerror}") from None
    return Source(str(path), digest, "parquet" if path.suffix.lower() == ".parquet" else "text")


def unlabelled_source(path, pairs=False):
    """A file of texts without labels (distill_plm.py --unlabeled_fn): one text a line (`sentence<TAB>pair`
    for pairs), or a TSV/CSV/JSONL/Parquet table whose text column is read, as classify_plm.py reads files."""
    source = file_source(unlabelled_file(path))
    return Source(source.name, source.digest, "unlabelled", pairs=pairs)


def unlabelled_file(path):
    """--unlabeled_fn as a Path, or one line saying why it cannot be one (checked before any other data is read)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--unlabeled_fn {path}: is a directory: give one file of texts (one a line, or a table "
                        "with a text column)")
    if not path.is_file():
        raise UserError(f"--unlabeled_fn {path}: no such file")
    return path


def hub_sources(name, config=None, cache_dir=None):
    """--dataset_name: a hub dataset id (or a local dataset directory), as {split: Source}. With the hub
    unreachable, only a copy already in the 🤗 datasets cache will do, and the answer comes at once."""
    import datasets
    from utils.hub import hub_reachable
    offline = not Path(name).is_dir() and not hub_reachable()
    hub_cache = str(Path(cache_dir) / "hub") if cache_dir else None
    try:
        with _hub_offline(offline):
            loaded = datasets.load_dataset(name, config, cache_dir=hub_cache)
    except Exception as error:  # hub errors, missing configs, bad data files: many types
        if offline:
            raise UserError(f"--dataset_name {name}: the Hugging Face hub cannot be reached and the dataset is not "
                            "in the local cache. Download it where there is a network and pass it as files "
                            "(--train_fn train.parquet ...) or as a directory written by DatasetDict.save_to_disk "
                            "(--train_fn DIR)") from None
        hint = " (choose one with --dataset_config_name)" if "config" in str(error).lower() and not config else ""
        raise UserError(f"--dataset_name {name}: cannot load it: {first_line(error)}{hint}") from None
    return _dict_sources(name, loaded)


@contextlib.contextmanager
def _hub_offline(offline):
    """datasets and huggingface_hub in offline mode (cache only, no retries) while the block runs."""
    if not offline:
        yield
        return
    import datasets
    import huggingface_hub.constants as hub
    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


def parse(source, columns, cache_dir, labeling=SINGLE, delimiter=None):
    """The source's rows as a memory-mapped Arrow dataset (text, text_pair, label, line; with
    multi-label data `label` is a list), from the cache when this content was parsed with these column,
    label and --delimiter flags before. Returns (dataset, meta)."""
    import datasets
    root = cache_root(cache_dir) / "parsed"
    key = content_key("parsed", source.kind, source.digest, Path(source.name).suffix.lower(), list(columns),
                      labeling.key(), *([delimiter] if delimiter and source.kind == "text" else []),
                      *(["pairs"] if source.pairs else []))
    directory = root / key
    with build_lock(root, key):
        meta = read_meta(directory)
        if meta is None:
            if directory.exists():
                import shutil
                shutil.rmtree(directory)
            build_entry(directory, lambda tmp: write_meta(tmp, _write_examples(source, columns, labeling, tmp,
                                                                               delimiter)))
            meta = read_meta(directory, verify=False)
    warn_empty(source.name, meta["n_empty"])
    dataset = datasets.Dataset.from_file(str(directory / "data.arrow"))
    return dataset, {**meta, "key": key}


def _write_examples(source, columns, labeling, directory, delimiter=None):
    import datasets
    from datasets.arrow_writer import ArrowWriter
    label = datasets.List(datasets.Value("string")) if labeling.multi else datasets.Value("string")
    features = datasets.Features({"text": datasets.Value("string"), "text_pair": datasets.Value("string"),
                                  "label": label, "line": datasets.Value("int64")})
    stats = {}
    examples = source.examples(columns, stats, labeling, delimiter)
    has_pairs = False
    with ArrowWriter(features=features, path=str(directory / "data.arrow"), writer_batch_size=WRITE_BATCH) as writer:
        while batch := list(itertools.islice(examples, WRITE_BATCH)):
            pairs = [example.text_pair for example in batch]
            has_pairs = has_pairs or any(pair is not None for pair in pairs)
            writer.write_batch({"text": [example.text for example in batch], "text_pair": pairs,
                                "label": [example.label for example in batch],
                                "line": [example.line for example in batch]})
        n_rows, _ = writer.finalize()
    return {"source": source.name, "n_rows": n_rows, "n_empty": stats.get("n_empty", 0), "has_pairs": has_pairs,
            "declared_labels": stats.get("declared_labels")}


def _saved_sources(path):
    import datasets
    try:
        loaded = datasets.load_from_disk(str(path))
    except IndexError as error:  # datasets 5.2 on a 0-row Dataset.save_to_disk: no Arrow file to read a schema from
        why = "the saved dataset has no rows" if _no_data_files(path) else f"cannot load it: {first_line(error)}"
        raise UserError(f"{path}: {why}") from None
    except FileNotFoundError:
        raise UserError(f"{path}: is a directory, but not one written by Dataset.save_to_disk or "
                        "DatasetDict.save_to_disk: pass a data file, or such a directory") from None
    except Exception as error:
        raise UserError(f"{path}: cannot load the saved dataset: {first_line(error)}") from None
    if isinstance(loaded, datasets.Dataset):
        return Source(str(path), _saved_digest(loaded), "arrow", loaded)
    return {split: Source(f"{path}[{split}]", _saved_digest(dataset), "arrow", dataset)
            for split, dataset in loaded.items()}


def _no_data_files(path):
    """A save_to_disk directory (or a split of one) whose state.json lists no Arrow files."""
    import json
    states = [Path(path) / "state.json", *Path(path).glob("*/state.json")]
    try:
        return any(state.exists() and not json.loads(state.read_text()).get("_data_files") for state in states)
    except (OSError, ValueError):
        return False


def _saved_digest(dataset):
    """A saved dataset's identity by content: its Arrow files' hashes (its fingerprint alone can stay the
    same when the data changes, e.g. for Dataset.from_generator)."""
    return content_key([file_digest(f["filename"]) for f in dataset.cache_files], dataset._fingerprint)


def _dict_sources(name, loaded):
    import datasets
    if isinstance(loaded, datasets.Dataset):
        loaded = {"train": loaded}
    return {split: Source(f"{name}[{split}]", dataset._fingerprint, "arrow", dataset)
            for split, dataset in loaded.items()}


def pick_splits(sources, name, label_column=None):
    """train, validation and test Sources of a dataset dict (the validation split under any of its
    usual names); a test split without labels (none, or all -1 as in GLUE) is left out."""
    if not isinstance(sources, dict):
        return sources, None, None
    if "train" not in sources:
        raise UserError(f"{name}: no 'train' split (splits: {', '.join(sources)}): pass the training data with "
                        "--train_fn")
    valid = next((sources[split] for split in VALID_SPLIT_NAMES if split in sources), None)
    test = sources.get("test")
    if test is not None and _unlabelled(test.dataset, label_column):
        log.info(f"note: {test.name} has no labels: not evaluated")
        test = None
    return sources["train"], valid, test


def _unlabelled(dataset, label_column):
    """No label column, or one holding only -1/None (hub test splits keep their labels secret)."""
    import pyarrow.compute as pc
    names = dataset.column_names
    if label_column is not None and str(label_column).isdigit() and int(label_column) < len(names):
        label_column = names[int(label_column)]
    column = label_column or next((name for name in DEFAULT_LABEL_COLUMNS if name in names), None)
    if column not in names:
        return True
    values = dataset.data.column(column)
    if values.null_count == len(values):
        return True
    try:
        return pc.max(values).as_py() == -1
    except Exception:  # not numbers: real labels
        return False


def _parquet_records(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow's ArrowInvalid for a file that is not Parquet
        raise UserError(f"{path}: not a readable Parquet file ({first_line(error)})") from None
    names = parquet.schema_arrow.names

    def records():
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=WRITE_BATCH):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
        except (OSError, pa.ArrowException) as error:  # a damaged page or column
            raise located(path, row + 1, f"cannot read this row of the Parquet file: {first_line(error)}") from None
    return records(), names


def _arrow_records(dataset, name):
    """(row, record) of a datasets.Dataset as plain Python values (whatever format it was saved with);
    class ids of a ClassLabel column become their names."""
    import datasets
    import pyarrow as pa
    dataset = dataset.with_format(None)
    names = list(dataset.column_names)
    class_names = {name: feature for name, feature in dataset.features.items()
                   if isinstance(feature, datasets.ClassLabel)}
    # multi-label hub data (GoEmotions' `labels`): a list of ClassLabel ids
    class_lists = {name: feature.feature for name, feature in dataset.features.items()
                   if isinstance(getattr(feature, "feature", None), datasets.ClassLabel)}

    def records():
        row = 0
        try:
            for batch in dataset.iter(batch_size=WRITE_BATCH):
                for values in zip(*(batch[name] for name in names)):
                    row += 1
                    record = dict(zip(names, values))
                    for name, feature in class_names.items():
                        value = record[name]
                        record[name] = feature.int2str(value) if isinstance(value, int) and value >= 0 else None
                    for name, feature in class_lists.items():
                        if isinstance(record[name], list):
                            record[name] = [feature.int2str(v) if isinstance(v, int) and v >= 0 else v
                                            for v in record[name]]
                    yield row, record
        except (OSError, pa.ArrowException) as error:
            raise located(name, row + 1, f"cannot read this row of the dataset: {first_line(error)}") from None
    return records(), names
