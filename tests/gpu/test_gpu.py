"""Checks that need CUDA (run by `make test` on a machine with a GPU)."""

import torch

from mnistlab.data import epoch_permutation


def test_epoch_permutation_is_the_same_on_cuda():
    cuda = epoch_permutation(1000, 0, 1, "cuda")
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), epoch_permutation(1000, 0, 1, "cpu"))
