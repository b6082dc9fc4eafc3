"""Data: find or download, verify and load MNIST-family datasets; batch them on the device.

>>> from mnistlab.config import DataConfig
>>> data = load_data(DataConfig(dataset="mnist", train_limit=2000))          # doctest: +SKIP
>>> order = epoch_permutation(len(data.train), seed=0, epoch=1)                # doctest: +SKIP
>>> x, y = next(iterate_batches(data.train, 256, order=order))                 # doctest: +SKIP
"""

from .batching import epoch_permutation, iterate_batches, num_batches, to_float
from .datasets import (
    DATASETS,
    DataBundle,
    DatasetSpec,
    Split,
    channel_stats,
    load_data,
    load_raw,
    load_test,
    read_idx,
    resolve_data_dir,
    split_indices,
)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Split",
    "DataBundle",
    "resolve_data_dir",
    "read_idx",
    "load_raw",
    "split_indices",
    "channel_stats",
    "load_data",
    "load_test",
    "epoch_permutation",
    "to_float",
    "iterate_batches",
    "num_batches",
]
