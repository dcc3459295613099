"""Reading, tokenizing, batching: everything between a data file (or a 🤗 dataset) and a model batch.

The names below are imported on first use (PEP 562), so that `data_load.readers` alone (what
classify_plm.py's file mode and the torch-free backend read files with) does not import torch through
the collator and the dataset."""
import importlib

_HOMES = {
    "TextClassificationCollator": "collator",
    "TextClassificationDataset": "dataset", "TextLookup": "dataset", "column_numpy": "dataset",
    "encode_split": "dataset", "encode_splits": "dataset", "label_matrix": "dataset", "model_inputs": "dataset",
    "Example": "readers", "read_examples": "readers",
    "LengthGroupedBatchSampler": "sampler", "LengthGroupedSampler": "sampler",
    "DataOptions": "splits", "Split": "splits", "Splits": "splits", "load_splits": "splits",
}

__all__ = list(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'data_load' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"data_load.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
