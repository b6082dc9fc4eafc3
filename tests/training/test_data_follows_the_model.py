"""The Trainer takes the data where the model trains (train() loads it there; the Python API's load_data keeps
it on the CPU, which met CUDA weights on a GPU: tests/gpu checks that run)."""

import torch

from mnistlab.bench import synthetic_data
from mnistlab.training.fit import data_on


def test_data_already_on_the_device_is_the_same_bundle():
    data = synthetic_data(10)
    assert data_on(data, torch.device("cpu")) is data


def test_data_elsewhere_is_moved_split_by_split():
    data = synthetic_data(10)
    moved = data_on(data, torch.device("meta"))  # another device without a GPU: meta tensors have no values
    assert {s.images.device.type for s in (moved.train, moved.val, moved.test)} == {"meta"}
    assert {s.labels.device.type for s in (moved.train, moved.val, moved.test)} == {"meta"}
    assert moved.train.images.shape == data.train.images.shape and moved.classes == data.classes
    assert data.train.images.device.type == "cpu"  # the caller's bundle is left as it was
