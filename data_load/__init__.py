"""Reading, tokenizing, batching: everything between a data file (or a 🤗 dataset) and a model batch."""
from data_load.collator import TextClassificationCollator
from data_load.dataset import (TextClassificationDataset, TextLookup, column_numpy, encode_split, encode_splits,
                              label_matrix, model_inputs)
from data_load.readers import Example, read_examples
from data_load.sampler import LengthGroupedBatchSampler, LengthGroupedSampler
from data_load.splits import DataOptions, Split, Splits, load_splits

__all__ = ["Example", "read_examples", "DataOptions", "Split", "Splits", "load_splits", "encode_split", "encode_splits", "column_numpy", "label_matrix",
           "model_inputs", "TextLookup", "TextClassificationDataset", "TextClassificationCollator",
           "LengthGroupedBatchSampler", "LengthGroupedSampler"]
