"""Batches straight from tensors on the device: no DataLoader, no per-sample Python.

A whole MNIST-family split is a few tens of MB of uint8, so it lives on the
device once (see :func:`~mnistlab.data.datasets.load_data`) and a batch is one
``index_select`` plus one conversion to float. The shuffle order of an epoch is
a pure function of ``(seed, epoch)``, so a resumed run regenerates it instead
of storing a generator state, and it is the same on every device.

>>> import torch
>>> from mnistlab.data.datasets import Split
>>> split = Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.arange(5))
>>> order = epoch_permutation(len(split), seed=0, epoch=1)
>>> [y.tolist() for _, y in iterate_batches(split, 2, order=order)] == [order[i : i + 2].tolist() for i in (0, 2, 4)]
True
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Iterator

import torch

from .datasets import Split

__all__ = ["epoch_permutation", "to_float", "iterate_batches", "num_batches"]


def _epoch_seed(seed: int, epoch: int) -> int:
    # A hash rather than e.g. seed * 1000 + epoch: no two (seed, epoch) pairs collide in
    # practice, and the stream differs from torch.manual_seed(seed) used for the weights.
    # (The CPU generator's Mersenne Twister keeps the low 32 bits of the seed: 2**32 orders.)
    digest = hashlib.sha256(f"mnistlab.epoch_permutation:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def epoch_permutation(n: int, seed: int, epoch: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The shuffle order of ``n`` examples for one epoch: depends only on ``(seed, epoch)``.

    Generated on the CPU with its own ``torch.Generator`` (the global RNG is not
    touched) and then moved to ``device``, so CPU and GPU runs see the same order.

    >>> torch.equal(epoch_permutation(10, 0, 3), epoch_permutation(10, 0, 3))
    True
    """
    if n < 0:
        raise ValueError(f"epoch_permutation needs n >= 0, got {n}")
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator).to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1], on the same device.

    >>> to_float(torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    # Float images were divided by 255 again, in place: .float() of a float32 tensor is that tensor, so the
    # caller's images changed too
    if images.dtype != torch.uint8:
        raise ValueError(f"to_float takes uint8 images (0 to 255), got {images.dtype}: float images are converted "
                         "already (divide them by 255 yourself if they hold 0 to 255)")
    return images.float().div_(255)


def num_batches(n: int, batch_size: int, min_last: int = 1) -> int:
    """Batches per pass over ``n`` examples; the last, partial batch counts.

    A remainder of fewer than ``min_last`` examples is not a batch of its own:
    it joins the batch before it (training passes 2 per process, since batch
    norm cannot normalize a single row, e.g. VGG's on 1x1 maps).

    >>> num_batches(10, 4), num_batches(9, 4), num_batches(9, 4, min_last=2)
    (3, 3, 2)
    """
    # A float (32.0, or 2.5) gave a float count, and iterate_batches a TypeError at its first batch
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}")
    total = -(-n // batch_size)
    if total > 1 and 0 < n % batch_size < min_last:
        total -= 1
    return total


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    order: torch.Tensor | None = None,
    start: int = 0,
    part: tuple[int, int] | None = None,
    min_last: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images as float in [0, 1], int64 labels)`` for batches ``start, start + 1, ...``.

    Batch ``b`` holds the examples ``order[b * batch_size : (b + 1) * batch_size]``
    (``order`` defaults to ``0 .. len(split) - 1``); the last batch may be smaller,
    or larger by a remainder of fewer than ``min_last`` examples (see :func:`num_batches`).
    ``start`` skips whole batches, so a run resumed mid-epoch continues where it
    stopped. Arguments are checked when this is called, not at the first batch.

    ``part=(rank, world)`` yields only that rank's share of every batch: the
    ``rank``-th of ``world`` consecutive, near-equal slices, so the
    parts of all ranks, in rank order, are the whole batch. ``batch_size`` stays
    the global batch and must be divisible by ``world``; only the last, partial
    batch may split unevenly (and give a rank no rows).

    >>> six = Split(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), torch.arange(6))
    >>> [y.tolist() for _, y in iterate_batches(six, 4, part=(1, 2))]
    [[2, 3], [5]]

    >>> split = Split(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.arange(5))
    >>> [y.tolist() for _, y in iterate_batches(split, 2, start=1)]
    [[2, 3], [4]]
    >>> [y.tolist() for _, y in iterate_batches(split, 2, start=1, min_last=2)]
    [[2, 3, 4]]
    """
    n = len(split) if order is None else order.shape[0]
    total = num_batches(n, batch_size, min_last)
    if order is not None:
        if order.dim() != 1 or order.dtype != torch.int64:
            raise ValueError(f"order must be a 1-D int64 tensor of indices, got {order.dtype} {tuple(order.shape)}")
        # Checked here, once per call: index_select would raise only at the batch holding the stray index.
        if order.numel() and not (0 <= int(order.min()) and int(order.max()) < len(split)):
            raise ValueError(f"order must hold indices in [0, {len(split)}) of the split's {len(split)} examples, "
                             f"got values from {int(order.min())} to {int(order.max())}")
        order = order.to(split.images.device)  # a no-op when the caller made it there
    if isinstance(start, bool) or not isinstance(start, numbers.Integral):  # 1.0 failed at the first batch
        raise TypeError(f"start must be an integer batch number, got {start!r}")
    if not 0 <= start <= total:
        raise ValueError(f"start must be a batch number in [0, {total}], got {start}")
    if part is not None:
        rank, world = part
        if not 0 <= rank < world:
            raise ValueError(f"part must be (rank, world) with 0 <= rank < world, got {part}")
        if batch_size % world:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by {world} processes: each takes an equal share of every "
                f"batch; choose a multiple of {world}, e.g. {batch_size - batch_size % world or world}"
            )
    return _batches(split, batch_size, order, start, total, part)


def _batches(
    split: Split, batch_size: int, order: torch.Tensor | None, start: int, total: int, part: tuple[int, int] | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(split) if order is None else order.shape[0]
    for b in range(start, total):
        lo, hi = b * batch_size, n if b == total - 1 else (b + 1) * batch_size
        if part is not None:  # this rank's slice of the batch; together the slices cover it in order
            rank, world = part
            lo, hi = lo + (hi - lo) * rank // world, lo + (hi - lo) * (rank + 1) // world
        if order is None:
            # Contiguous slices are views: no gather needed.
            yield to_float(split.images[lo:hi]), split.labels[lo:hi]
        else:
            idx = order[lo:hi]
            yield to_float(split.images.index_select(0, idx)), split.labels.index_select(0, idx)
