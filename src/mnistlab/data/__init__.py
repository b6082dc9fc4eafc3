"""Data: find or download, verify and load MNIST-family datasets; batch them on the device.

>>> from mnistlab.config import DataConfig
>>> data = load_data(DataConfig(dataset="mnist", train_limit=2000))          # doctest: +SKIP
>>> order = epoch_permutation(len(data.train), seed=0, epoch=1)                # doctest: +SKIP
>>> x, y = next(iterate_batches(data.train, 256, order=order))                 # doctest: +SKIP
"""

import torch

from ..config import Config, DataConfig
from . import datasets
from .batching import epoch_permutation, iterate_batches, num_batches, to_float
from .datasets import (
    DATASETS,
    DataBundle,
    DatasetSpec,
    ScoringSet,
    Split,
    channel_stats,
    load_raw,
    read_idx,
    resolve_data_dir,
    split_indices,
)


def load_data(cfg: DataConfig, device: str | torch.device = "cpu") -> DataBundle:
    """Load, verify and split a dataset as ``cfg`` (a config's ``[data]`` section, ``cfg.data``) says; the splits
    are uint8 tensors on ``device`` ("cpu", "auto", "cuda", "cuda:N", "mps" or a torch.device; one this machine
    does not have is a ConfigError, before any file is read). See :func:`mnistlab.data.datasets.load_data`.

    >>> load_data(Config())
    Traceback (most recent call last):
    ...
    TypeError: load_data() takes a DataConfig, got a whole Config: pass its data section, load_data(cfg.data)
    """
    return datasets.load_data(cfg, _checked(cfg, device, "load_data"))


def load_test(cfg: DataConfig, device: str | torch.device = "cpu") -> ScoringSet:
    """The test split of ``cfg.dataset`` alone (``cfg``: a config's ``[data]`` section), on ``device``: what
    scoring a trained model needs. See :func:`mnistlab.data.datasets.load_test`.

    >>> load_test(Config())
    Traceback (most recent call last):
    ...
    TypeError: load_test() takes a DataConfig, got a whole Config: pass its data section, load_test(cfg.data)
    """
    # load_data's checks: load_test(cfg) and device="auto" failed as load_data's did before them
    return datasets.load_test(cfg, _checked(cfg, device, "load_test"))


def _checked(cfg: DataConfig, device: str | torch.device, caller: str) -> str | torch.device:
    """``device`` resolved, after ``cfg`` is checked to be a DataConfig."""
    # The whole Config (the README's load_data(cfg.data) written load_data(cfg)), a dict or a dataset name failed
    # inside with "AttributeError: 'Config' object has no attribute 'dataset'".
    if isinstance(cfg, Config):
        raise TypeError(f"{caller}() takes a DataConfig, got a whole Config: pass its data section, "
                        f"{caller}(cfg.data)")
    if not isinstance(cfg, DataConfig):
        raise TypeError(f"{caller}() takes a DataConfig (cfg.data, or mnistlab.config.DataConfig(dataset=...)), got "
                        f"{type(cfg).__name__}")
    # cfg.train.device's names, checked before any file is read: "auto" and "gpu" were torch's "Expected one of
    # cpu, cuda, ... device type at start of device string" once the splits were loaded, and a CUDA device that
    # is not here failed in torch after the whole dataset was read and verified
    from ..training.fit import resolve_device

    return resolve_device(device, f"{caller}(device)") if isinstance(device, (str, torch.device)) else device


__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Split",
    "DataBundle",
    "ScoringSet",
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
