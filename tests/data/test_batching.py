"""Batching on tensors: per-epoch permutations, batch coverage, resuming mid-epoch."""

from __future__ import annotations

import pytest
import torch

from mnistlab.data import Split, epoch_permutation, iterate_batches, num_batches, to_float


def indexed_split(n: int) -> Split:
    """Image i is filled with the value i % 256 and labelled i, so every batch shows where it came from."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 3).contiguous()
    return Split(images, torch.arange(n))


def labels_of(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_epoch_permutation_depends_only_on_seed_and_epoch():
    a = epoch_permutation(1000, seed=0, epoch=1, device="cpu")
    assert a.dtype == torch.int64 and torch.equal(a.sort().values, torch.arange(1000))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, epoch_permutation(1000, seed=0, epoch=1, device="cpu"))
    assert not torch.equal(a, epoch_permutation(1000, seed=0, epoch=2, device="cpu"))
    assert not torch.equal(a, epoch_permutation(1000, seed=1, epoch=1, device="cpu"))


def test_epoch_permutation_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    epoch_permutation(100, seed=5, epoch=7)
    assert torch.equal(torch.rand(3), expected)


def test_to_float():
    x = to_float(torch.tensor([0, 128, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32 and x.tolist() == pytest.approx([0.0, 128 / 255, 1.0])


@pytest.mark.parametrize(
    ("n", "batch_size", "expected"), [(0, 4, 0), (1, 4, 1), (8, 4, 2), (9, 4, 3), (60000, 256, 235)]
)
def test_num_batches(n, batch_size, expected):
    assert num_batches(n, batch_size) == expected


def test_a_remainder_below_min_last_joins_the_batch_before_it():
    split = indexed_split(9)
    assert num_batches(9, 4, min_last=2) == 2 and num_batches(10, 4, min_last=2) == 3
    assert num_batches(1, 4, min_last=2) == 1  # a split smaller than min_last is still one batch
    assert labels_of(iterate_batches(split, 4, min_last=2)) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    order = epoch_permutation(9, seed=0, epoch=1)
    assert labels_of(iterate_batches(split, 4, order=order, start=1, min_last=2)) == [order[4:].tolist()]
    # under two processes each takes its share of the merged batch: 2 and 3 rows, never 1
    parts = [labels_of(iterate_batches(split, 4, order=order, start=1, part=(r, 2), min_last=4)) for r in (0, 1)]
    assert parts == [[order[4:6].tolist()], [order[6:].tolist()]]


def test_num_batches_rejects_a_zero_batch_size():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        num_batches(10, 0)


def test_iterate_batches_covers_every_index_once_in_order_of_the_permutation():
    split = indexed_split(1000)
    order = epoch_permutation(1000, seed=0, epoch=1)
    batches = list(iterate_batches(split, 64, order=order))
    assert len(batches) == num_batches(1000, 64) == 16
    assert [len(y) for _, y in batches] == [64] * 15 + [1000 - 15 * 64]  # last partial batch kept
    assert torch.equal(torch.cat([y for _, y in batches]), order)
    for x, y in batches:  # images travel with their labels
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 2, 3)
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y % 256)


def test_iterate_batches_without_order_is_sequential():
    split = indexed_split(10)
    assert labels_of(iterate_batches(split, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_start_skips_whole_batches():
    split = indexed_split(100)
    order = epoch_permutation(100, seed=3, epoch=2)
    full = labels_of(iterate_batches(split, 32, order=order))
    assert labels_of(iterate_batches(split, 32, order=order, start=2)) == full[2:]
    assert labels_of(iterate_batches(split, 32, order=order, start=4)) == []  # resumed after the last batch


def test_bad_arguments_fail_at_the_call():
    split = indexed_split(10)
    with pytest.raises(ValueError, match=r"start must be a batch number in \[0, 3\], got 4"):
        iterate_batches(split, 4, start=4)
    with pytest.raises(ValueError, match="1-D int64"):
        iterate_batches(split, 4, order=torch.arange(10, dtype=torch.int32))


def test_an_empty_split_has_no_batches():
    split = Split(torch.empty(0, 1, 28, 28, dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    assert len(split) == 0 and list(iterate_batches(split, 8)) == []
    assert list(iterate_batches(split, 8, order=epoch_permutation(0, 0, 1))) == []


def test_batches_of_real_mnist(mnist_small):
    order = epoch_permutation(len(mnist_small.train), seed=0, epoch=1)
    x, y = next(iterate_batches(mnist_small.train, 256, order=order))
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(y, mnist_small.train.labels[order[:256]])


def test_training_a_batch_norm_net_never_meets_a_one_image_batch(mnist_small):
    """2,000 images in batches of 1,999 left a last batch of one, and BatchNorm on VGG's 1x1 maps raised."""
    from mnistlab.config import Config, apply_overrides
    from mnistlab.models import build_model
    from mnistlab.training.fit import Trainer

    cfg = apply_overrides(Config(), [
        "model.name=vgg", 'model.channels=[4, "M", 4, "M", 4, "M", 4, "M", 4]', "model.batch_norm=true",
        "train.epochs=1", "train.batch_size=1999", "train.device=cpu", "train.progress=false",
    ])
    torch.manual_seed(0)
    model = build_model("vgg", mean=mnist_small.mean, std=mnist_small.std, **cfg.model.options())
    fit = Trainer(model, mnist_small, cfg).fit()
    assert fit.steps == 1 and fit.history[0]["train_loss"] > 0
