"""Audit 142: tests that kill the mutants of a hand-made mutation audit no other test caught, in batching,
augmentation, mixup/CutMix, the weight average, fine-tuning and the Trainer's loss scaling (``_loss``,
``_parts``). Each test asserts what the docstrings, the README or the papers define; all are unit level."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mnistlab.config import AugmentConfig, MixupConfig
from mnistlab.data.augment import affine_matrices, augment
from mnistlab.data.batching import iterate_batches
from mnistlab.data.datasets import Split
from mnistlab.training.finetune import freeze, hold_frozen_batch_norm
from mnistlab.training.fit import Trainer
from mnistlab.training.mixing import mix_batch


def numbered_split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), torch.arange(n))


# --- batching ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("part", [(2, 2), (3, 2), (-1, 2)])
def test_a_rank_outside_the_world_is_refused_at_the_call(part):
    # rank == world would take rows past the end of every batch (the next batch's, or none)
    with pytest.raises(ValueError, match="rank"):
        iterate_batches(numbered_split(8), 4, part=part)


def test_an_order_index_equal_to_the_split_length_is_refused_at_the_call():
    # One past the last example: index_select would fail only at the batch holding it, mid-epoch
    order = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])
    with pytest.raises(ValueError, match=r"indices in \[0, 8\)"):
        iterate_batches(numbered_split(8), 4, order=order)
    assert len(list(iterate_batches(numbered_split(8), 4, order=torch.arange(8).flip(0)))) == 2


def test_a_global_batch_not_divisible_by_the_world_is_refused_with_a_multiple_to_use():
    with pytest.raises(ValueError, match="not divisible by 2 processes.*e.g. 4"):
        iterate_batches(numbered_split(10), 5, part=(0, 2))


# --- augmentation -----------------------------------------------------------------------------------------------

def test_affine_draws_are_uniform_in_plus_minus_each_range():
    torch.manual_seed(0)
    n = 4000
    m = affine_matrices(n, AugmentConfig(enabled=True, rotation=30.0, shift=0.1), torch.device("cpu"))
    # scale 1 and no shear: the sampling matrix is rotate(-angle), so angle = atan2(m01, m00)
    angle = torch.rad2deg(torch.atan2(m[:, 0, 1], m[:, 0, 0]))
    assert angle.abs().max() <= 30.0 + 1e-4
    assert (angle < -20).float().mean() > 0.12 and (angle > 20).float().mean() > 0.12  # both ends, 1/6 each
    assert abs(angle.mean().item()) < 1.5
    shift = -m[:, :, 2] / 2  # grid units span 2 per side: back to fractions of the side
    assert shift.abs().max() <= 0.1 + 1e-6
    assert (shift < -0.07).float().mean() > 0.1 and (shift > 0.07).float().mean() > 0.1  # 0.15 each


# --- the Trainer's loss ------------------------------------------------------------------------------------------

class _LossOnly:
    """Just what Trainer._loss and Trainer._parts read: the config, the world size, the class weights."""
    _loss = Trainer._loss
    _parts = Trainer._parts

    def __init__(self, world=1, weights=None, smoothing=0.0, micro=None, batch_norm=False):
        self.cfg = SimpleNamespace(train=SimpleNamespace(label_smoothing=smoothing, micro_batch_size=micro))
        self._world, self._class_weights, self._batch_norm = world, weights, batch_norm


@pytest.mark.parametrize("weights", [None, torch.tensor([1.0, 2.0, 0.5])])
def test_the_ranks_losses_average_to_the_global_batch_mean_as_ddp_averages_gradients(weights):
    # 7 rows on 2 ranks (4 + 3): each rank's loss is its rows' sum times world / rows, so the ranks' mean is the
    # mean over the whole batch that one process computes
    torch.manual_seed(0)
    logits, y = torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    one = _LossOnly(weights=weights, smoothing=0.1)._loss(logits, y, 7)
    two = _LossOnly(world=2, weights=weights, smoothing=0.1)
    ranks = [two._loss(logits[:4], y[:4], 7), two._loss(logits[4:], y[4:], 7)]
    assert ((ranks[0] + ranks[1]) / 2).item() == pytest.approx(one.item(), rel=1e-6)
    w = torch.ones(3) if weights is None else weights
    expected = (F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none") * w[y]).mean()
    assert one.item() == pytest.approx(expected.item(), rel=1e-6)


def test_pixels_moved_in_from_outside_the_image_are_black():
    # The module's promise: the background of every MNIST-family dataset, not the edge pixels stretched out
    torch.manual_seed(0)
    out = augment(torch.full((32, 1, 28, 28), 255, dtype=torch.uint8), AugmentConfig(enabled=True, shift=0.5))
    assert (out == 0).float().mean() > 0.1
    assert ((out == 0).flatten(1).any(1)).float().mean() > 0.8  # nearly every image moved by a pixel or more


def test_elastic_distortion_alone_is_applied_not_taken_for_the_identity():
    # Every affine range 0 and only elastic_alpha set: the "all ranges 0" shortcut must not swallow it
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    cfg = AugmentConfig(enabled=True, rotation=0.0, scale=0.0, shift=0.0, shear=0.0, elastic_alpha=8.0,
                        elastic_sigma=3.0)
    out = augment(x, cfg)
    assert out is not x and (out - x).abs().mean() > 0.05
    assert augment(x, AugmentConfig(enabled=True, rotation=0.0, scale=0.0, shift=0.0, shear=0.0)) is x


def test_with_both_on_each_kind_draws_its_share_from_its_own_alpha():
    # mixup's batches from Beta(alpha, alpha), CutMix's from Beta(cutmix_alpha, cutmix_alpha): with alpha 0.1 the
    # mixup shares pile up at 0 and 1 (P(min(s, 1 - s) < 0.05) ~ 0.7), with 1.0 they are uniform (0.1)
    torch.manual_seed(3)
    x, y = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 28, 28).clone(), torch.arange(8)
    mixup_shares = []
    for _ in range(200):
        mixed, _, share = mix_batch(x, y, MixupConfig(alpha=0.1, cutmix_alpha=1.0))
        if not torch.equal(mixed, mixed.round()):  # fractions of two numbers: a mixup batch (CutMix pastes whole)
            mixup_shares.append(share)
    assert len(mixup_shares) > 60
    assert sum(min(s, 1 - s) < 0.05 for s in mixup_shares) / len(mixup_shares) > 0.4


@pytest.mark.parametrize("batch_norm", [False, True])
def test_micro_batch_parts_are_as_even_as_can_be_and_keep_each_rows_partner(batch_norm):
    # 10 rows in parts of at most 3: four parts of 3, 3, 2, 2 (not 3, 3, 3, 1), each row with its partner label
    x, y = torch.rand(10, 1, 4, 4), torch.arange(10)
    parts = _LossOnly(micro=3, batch_norm=batch_norm)._parts(x, y, (y.flip(0), 0.7))
    assert [len(py) for _, py, _ in parts] == [3, 3, 2, 2]
    assert torch.equal(torch.cat([px for px, _, _ in parts]), x)
    for _, py, (partner, share) in parts:
        assert torch.equal(partner, 9 - py) and share == 0.7
    # With batch norm no part has a single row: 5 rows in parts of at most 1 are two parts, 3 and 2
    five = _LossOnly(micro=1, batch_norm=batch_norm)._parts(x[:5], y[:5], None)
    assert [len(py) for _, py, _ in five] == ([3, 2] if batch_norm else [1] * 5)


# --- fine-tuning ------------------------------------------------------------------------------------------------

def test_only_a_batch_norm_layer_frozen_whole_runs_in_inference_mode_of_any_dimension():
    # "a batch-norm layer whose parameters are all frozen": BatchNorm1d (a classifier's) as well as 2d, and a
    # layer with a trainable bias left training (its statistics still follow the data), as is one without
    # parameters (affine=False), which no freeze pattern can name
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.LazyLinear(4), torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4),
                              torch.nn.BatchNorm1d(4, affine=False))
    net(torch.rand(2, 1, 5, 5))
    freeze(net, ["1", "4", "5.weight"])
    net.train()
    hold_frozen_batch_norm(net)
    assert [net[i].training for i in (1, 4, 5, 6)] == [False, False, True, True]


@pytest.mark.parametrize("alpha", [0.001, 0.003])
def test_a_tiny_alpha_mixes_almost_no_batch_half_and_half(alpha):
    # Beta(a, a) puts about 2a of its mass in (0.1, 0.9): at alpha 0.001, the config's least, torch's Beta drew
    # exactly 0.5 for a quarter of the batches (both gamma draws underflowed to 0)
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    shares = torch.tensor([mix_batch(x, y, MixupConfig(alpha=alpha))[2] for _ in range(3000)])
    assert ((shares - 0.5).abs() < 0.4).float().mean() < 0.012
    assert 0.4 < (shares > 0.5).float().mean() < 0.6  # either image's own, at even odds


def test_the_share_follows_beta_alpha_alpha():
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    for alpha in (0.2, 1.0):
        shares = torch.tensor([mix_batch(x, y, MixupConfig(alpha=alpha))[2] for _ in range(3000)], dtype=torch.float64)
        assert shares.mean().item() == pytest.approx(0.5, abs=0.02)
        assert shares.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.08)  # Beta(a, a)'s variance
