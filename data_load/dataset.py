"""The datasets the trainers and the classifier read: tokenized Arrow tables for training and
evaluation, and a small in-memory one for a chunk of sentences to classify."""
import numpy as np
import torch

from data_load.arrow import select_rows
from data_load.encoding import encode_texts, tokenize
from data_load.labels import label_ids, multi_hot, target_values

MODEL_COLUMNS = ("input_ids", "token_type_ids", "labels", "teacher_logits")


def encode_splits(splits, tokenizer, max_length, workers=None, cache_dir=None, long_text="truncate", stride=None):
    """(train, valid, test) datasets.Dataset with the parsed columns plus `input_ids`,
    `token_type_ids` (where the model uses them), `length` and `labels` (class ids; regression: the
    numbers). With --long_text sliding a text's token columns hold a list of windows (window_rows).

    A source is tokenized whole (cached once, whatever the validation split or seed), unless
    --max_train_samples/--max_eval_samples leave less than half of it: then only those rows are."""
    done = {}
    return tuple(encode_split(split, splits.labels, tokenizer, max_length, workers, cache_dir, done, long_text,
                              stride, splits.regression)
                 for split in (splits.train, splits.valid, splits.test))


def encode_split(split, labels, tokenizer, max_length, workers=None, cache_dir=None, done=None, long_text="truncate",
                 stride=None, regression=False):
    """One split as encode_splits makes it; `done` shares the sources tokenized in this run."""
    if split is None:
        return None
    done = {} if done is None else done
    # a whole source already tokenized in this run (the training file, when validation is split off) serves
    # any subset of it
    subset = split.sampled and len(split) < len(split.rows) / 2 and split.key not in done
    key = (split.key, id(split)) if subset else split.key  # a whole source is tokenized once per run
    if key not in done:
        table = tokenize(split.rows, split.key, split.name, tokenizer, max_length, split.has_pairs, workers,
                         cache_dir, indices=split.indices if subset else None, long_text=long_text, stride=stride)
        column = table.data.column("label")
        done[key] = table.add_column("labels", target_values(column) if regression else label_ids(column, labels))
    table = done[key]
    return table if subset or split.indices is None else select_rows(table, split.indices)


def has_windows(dataset):
    """Whether a text's token columns hold a list of windows (--long_text sliding)."""
    import datasets
    feature = dataset.features["input_ids"]
    return isinstance(feature, (datasets.List, datasets.Sequence)) and isinstance(
        getattr(feature, "feature", None), (datasets.List, datasets.Sequence))


def window_rows(dataset):
    """(windows, text_of_window): with sliding windows, an in-memory Dataset with a row per window (its
    text's label) and the position of each window's text in `dataset` (a NumPy array); a dataset of one
    input per text comes back as it is, with None. Arrow list operations, no Python object per row."""
    if not has_windows(dataset):
        return dataset, None
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets.table import InMemoryTable

    ids = selected_column(dataset, "input_ids")
    parents = pc.list_parent_indices(ids)
    out = {"input_ids": pc.list_flatten(ids), "length": pc.list_flatten(selected_column(dataset, "length"))}
    if "token_type_ids" in dataset.column_names:
        out["token_type_ids"] = pc.list_flatten(selected_column(dataset, "token_type_ids"))
    if "labels" in dataset.column_names:
        out["labels"] = selected_column(dataset, "labels").take(parents)
    features = datasets.Features({name: (dataset.features[name].feature if name != "labels" else dataset.features[name])
                                  for name in out})
    table = InMemoryTable(pa.table(out).cast(features.arrow_schema))
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features)), parents.to_numpy()


def training_rows(dataset, **matrices):
    """The columns a training batch needs (model_inputs' and `length`) of the dataset's rows, as an in-memory
    Dataset, with a float32 column for each matrix given (a row per dataset row: a teacher's logits);
    datasets.concatenate_datasets joins such parts into one training set."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable
    out = {name: selected_column(dataset, name) for name in (*MODEL_COLUMNS, "length") if name in dataset.column_names}
    for name, matrix in matrices.items():
        matrix = np.asarray(matrix, dtype=np.float32)
        out[name] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
    table = pa.table(out)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(
        features=datasets.Features.from_arrow_schema(table.schema)))


def selected_column(dataset, name):
    """A column of the dataset's rows as one Arrow array: dataset.select()'s row selection applied (datasets
    keeps it private), chunks combined."""
    import pyarrow as pa
    column = dataset.data.column(name)
    if dataset._indices is not None:
        column = column.take(dataset._indices.column(0))
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def column_numpy(dataset, name):
    """A column of a datasets.Dataset as a NumPy array, through Arrow (Dataset's own formatting takes
    seconds on a large selection; this takes milliseconds: docs/benchmarks.md, "Figures behind the code")."""
    return selected_column(dataset, name).to_numpy(zero_copy_only=False)


def label_matrix(dataset, n_labels):
    """The multi-label `labels` column (a list of class ids per row) as a 0/1 matrix, rows x labels."""
    import pyarrow.compute as pc
    column = selected_column(dataset, "labels")
    return multi_hot(pc.list_parent_indices(column).to_numpy(), pc.list_flatten(column).to_numpy(), len(column),
                     n_labels)


def model_inputs(dataset):
    """Only the columns a batch needs: reading the texts of every training row would be wasted work."""
    return dataset.select_columns([name for name in MODEL_COLUMNS if name in dataset.column_names])


class TextLookup:
    """texts[i]: the sentence of row i (`sentence<TAB>pair` for pairs), read when asked for, so a
    report of the worst 50 errors reads 50 texts, not the whole validation set."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, i):
        row = self.dataset[int(i)]
        return row["text"] if row.get("text_pair") is None else f"{row['text']}\t{row['text_pair']}"


class TextClassificationDataset(torch.utils.data.Dataset):
    """Sentences in memory, tokenized up front (truncated at max_length, not padded), with their
    lengths: the classifier's chunks of stdin and the ONNX export's check sentences.

    Items are dicts with `input_ids` (and `token_type_ids` where the model uses them), `labels`
    when label2id is given, and `text` (the raw sentence) when with_text is set."""

    def __init__(self, examples, tokenizer, max_length, label2id=None, with_text=False, long_text="truncate",
                 stride=None):
        pairs = None
        if any(example.text_pair is not None for example in examples):
            pairs = [example.text_pair or "" for example in examples]
        encoded = encode_texts(tokenizer, [example.text for example in examples], pairs, max_length, long_text, stride)
        self.input_ids = encoded["input_ids"]
        self.token_type_ids = encoded.get("token_type_ids")
        # sliding: items are windows; text_of_item[i] is the example window i belongs to (None: one item each)
        self.text_of_item = None
        if long_text == "sliding" and pairs is None:
            self.text_of_item = [i for i, text in enumerate(self.input_ids) for _ in text]
            self.input_ids = [window for text in self.input_ids for window in text]
            if self.token_type_ids is not None:
                self.token_type_ids = [window for text in self.token_type_ids for window in text]
        self.lengths = [len(ids) for ids in self.input_ids]
        of = self.text_of_item or range(len(examples))
        self.labels = [label2id[examples[i].label] for i in of] if label2id else None
        self.texts = [examples[i].text for i in of] if with_text else None
        self.pairs = [examples[i].text_pair for i in of] if with_text and pairs else None

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, i):
        item = {"input_ids": self.input_ids[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.texts is not None:
            item["text"] = self.texts[i] if self.pairs is None else f"{self.texts[i]}\t{self.pairs[i]}"
        return item
