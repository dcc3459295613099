"""Reading, tokenizing, batching: everything between a data file and a model batch."""
from data_load.collator import TextClassificationCollator
from data_load.dataset import TextClassificationDataset
from data_load.readers import Example, read_examples
from data_load.sampler import LengthGroupedBatchSampler
from data_load.splits import Splits, load_splits

__all__ = ["Example", "read_examples", "Splits", "load_splits", "TextClassificationDataset",
           "TextClassificationCollator", "LengthGroupedBatchSampler"]
