"""Arrow helpers the data module shares."""
import hashlib

import numpy as np


def select_rows(dataset, indices):
    """dataset.select(indices) for a table without a selection of its own, without the Python list of
    every index that Dataset.select builds (seconds and hundreds of MB on millions of rows: docs/benchmarks.md,
    "Figures behind the code")."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable
    indices_table = InMemoryTable(pa.table({"indices": pa.array(np.asarray(indices, dtype=np.uint64))}))
    return datasets.Dataset(dataset.data, info=dataset.info.copy(), split=dataset.split, indices_table=indices_table,
                            fingerprint=f"{dataset._fingerprint}-{hashlib.blake2b(np.asarray(indices).tobytes(), digest_size=8).hexdigest()}")
