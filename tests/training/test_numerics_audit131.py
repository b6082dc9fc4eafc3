"""mixup / CutMix, the weight average and test-time shifts against reference computations written from the papers
and torch's docs (plain PyTorch, no mnistlab code in the references)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mnistlab.config import MixupConfig
from mnistlab.training.ema import WeightAverage
from mnistlab.training.evaluate import tta_views
from mnistlab.training.mixing import mix_batch


# ---- the weight average -------------------------------------------------------------------------------------


class _Tied(nn.Module):
    """An encoder and a decoder sharing one weight (as language models tie their embeddings), with batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.norm = nn.BatchNorm1d(4)
        self.decode = nn.Linear(4, 4)
        self.decode.weight = self.encode.weight  # tied: one Parameter, two names in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.norm(self.encode(x)).relu())


def _train_steps(model: nn.Module, steps: int, after_step) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        after_step(model)


def test_a_tied_weight_is_averaged_once_a_step_as_torchs_averaged_model_does():
    # Before the fix the tied weight was two state-dict entries, each moved towards the weights: decay**2 a step.
    torch.manual_seed(0)
    net = _Tied()
    assert net.encode.weight is net.decode.weight
    ema = WeightAverage(net, decay=0.5, warmup=False)
    reference = AveragedModel(copy.deepcopy(net), multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    reference.update_parameters(net)  # its first update copies the model: the start mnistlab's average has
    mine = copy.deepcopy(net)
    _train_steps(mine, 5, lambda m: (ema.update(m), reference.update_parameters(m)))
    got, want = ema.module.state_dict(), reference.module.state_dict()
    for k, v in got.items():
        if v.is_floating_point():  # (AveragedModel averages num_batches_tracked too; mnistlab copies it)
            torch.testing.assert_close(v, want[k], rtol=0, atol=1e-6, msg=k)
    assert ema.module.encode.weight is ema.module.decode.weight  # still tied
    # one step by the formula: ema = decay * ema + (1 - decay) * weights, for the tied weight as for any other
    before = ema.module.decode.weight.detach().clone()
    with torch.no_grad():
        mine.decode.weight.add_(1.0)
    ema.update(mine)
    torch.testing.assert_close(ema.module.decode.weight, 0.5 * before + 0.5 * mine.decode.weight.detach())


def test_the_warmed_up_average_and_its_batch_norm_statistics_follow_the_formula_step_by_step():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    ema = WeightAverage(net, decay=0.6, warmup=True)
    by_hand = {k: v.detach().clone() for k, v in net.state_dict().items()}
    decays = []

    def step(m):
        ema.update(m)
        d = min(0.6, (1 + len(decays)) / (10 + len(decays)))  # TF's num_updates warm-up
        for k, v in m.state_dict().items():
            by_hand[k] = d * by_hand[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        decays.append(d)

    _train_steps(net, 16, step)
    assert decays[:3] == [0.1, 2 / 11, 3 / 12] and decays[-1] == 0.6
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, by_hand[k], rtol=0, atol=1e-6, msg=k)
    assert ema.module.state_dict()["1.num_batches_tracked"] == 16  # an integer: copied
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_a_frozen_parameter_keeps_its_value_in_the_average_and_a_restored_average_goes_on_identically():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    frozen = net[0].weight.detach().clone()
    ema = WeightAverage(net, decay=0.9)
    _train_steps(net, 4, ema.update)
    torch.testing.assert_close(ema.module[0].weight, frozen, rtol=0, atol=0)
    saved = copy.deepcopy(ema.state_dict())
    resumed = WeightAverage(net, decay=0.9)
    resumed.load_state_dict(saved)
    assert resumed.updates == 4 and resumed.current_decay() == ema.current_decay()
    more = copy.deepcopy(net)
    _train_steps(net, 3, ema.update)
    _train_steps(more, 3, resumed.update)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_a_numpy_decay_is_taken_and_the_average_follows_it():
    # np.float32 (a value read from an array) was refused as "must be a number in (0, 1), got np.float32(0.5)"
    import numpy as np

    net = nn.Linear(2, 1)
    ema = WeightAverage(net, decay=np.float32(0.5), warmup=False)
    assert type(ema.decay) is float and ema.decay == 0.5
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, before + 0.5)


# ---- mixup and CutMix ---------------------------------------------------------------------------------------


def _smoothed_one_hot(y: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    return F.one_hot(y, k).double() * (1 - eps) + eps / k


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixup_and_its_loss_are_zhangs_with_the_blended_smoothed_labels(eps):
    torch.manual_seed(3)
    x, index = torch.rand(6, 1, 5, 5), torch.arange(6)  # labels 0-5: a partner's label is its index
    mixed, partners, share = mix_batch(x, index, MixupConfig(alpha=0.4))
    assert 0 < share < 1 and sorted(partners.tolist()) == list(range(6))  # a permutation of the batch
    torch.testing.assert_close(mixed, share * x + (1 - share) * x[partners])  # Zhang et al.'s blend
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    partner = y[partners]
    # the loss fit takes (a * CE(y) + (1 - a) * CE(partner), label smoothing in each) is the cross-entropy
    # against the blended smoothed one-hot labels
    logits = torch.randn(6, 4, dtype=torch.float64)
    target = share * _smoothed_one_hot(y, 4, eps) + (1 - share) * _smoothed_one_hot(partner, 4, eps)
    reference = -(target * logits.log_softmax(1)).sum(1).mean()
    fits = share * F.cross_entropy(logits, y, label_smoothing=eps) \
        + (1 - share) * F.cross_entropy(logits, partner, label_smoothing=eps)
    torch.testing.assert_close(fits, reference)


@pytest.mark.parametrize("crop, size", [(0, (28, 28)), (2, (28, 28)), (1, (9, 13))])
def test_cutmix_pastes_one_box_inside_the_view_and_the_share_is_the_area_left(crop, size):
    torch.manual_seed(4)
    h, w = size[0] - 2 * crop, size[1] - 2 * crop
    areas, draws = [], 300
    for _ in range(draws):
        x = torch.rand(5, 1, *size)
        mixed, partner, share = mix_batch(x, torch.arange(5), MixupConfig(cutmix_alpha=1.0), crop=crop)
        if torch.equal(partner, torch.arange(5)):
            continue  # (every image its own partner: the box changes nothing to see)
        pasted = (mixed != x).any(0).any(0)  # pixels that came from a partner (random images differ everywhere)
        rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
        if len(rows):
            top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            assert pasted[top:bottom, left:right].all() and int(pasted.sum()) == (bottom - top) * (right - left)
            assert crop <= top and bottom <= crop + h and crop <= left and right <= crop + w  # inside the view
            for i in range(5):  # each image's box holds its partner's pixels (labels 0-4: the partner's index)
                j = int(partner[i])
                assert torch.equal(mixed[i][..., top:bottom, left:right], x[j][..., top:bottom, left:right])
        area = int(pasted.sum())
        assert share == pytest.approx(1 - area / (h * w), abs=1e-12)  # Yun et al.'s area-corrected lambda
        areas.append(area / (h * w))
    # Beta(1, 1): the drawn box covers 1 - a, a uniform: on average half the view before the clipping at the
    # edges, which cuts it by about a third (the centre is uniform over the view)
    mean = sum(areas) / len(areas)
    assert 0.25 < mean < 0.45


def test_with_both_on_the_batch_is_mixed_by_one_method_at_even_odds():
    torch.manual_seed(5)
    cut = 0
    for _ in range(400):
        x = torch.rand(4, 1, 8, 8)
        mixed, partner, share = mix_batch(x, torch.arange(4), MixupConfig(alpha=0.3, cutmix_alpha=1.0))
        moved = partner != torch.arange(4)  # images with another image as partner (labels 0-3: its index)
        if not moved.any():
            continue  # (every image its own partner: either way the batch as it was)
        blend = share * x + (1 - share) * x[partner]
        if torch.allclose(mixed, blend) and not torch.equal(mixed[moved], x[moved]):
            continue  # mixup: every pixel blended
        cut += 1  # CutMix: each pixel its own image's or its partner's, one box of them
        assert ((mixed == x) | (mixed == x[partner])).all()
    assert 150 < cut < 240


def test_uint8_images_are_refused_for_mixup_before_any_draw_and_cutmix_alone_takes_them():
    # With both on, a uint8 batch (augment keeps uint8) failed with torch's "lerp_kernel_scalar not implemented
    # for 'Byte'" in about half the batches: those the coin gave to mixup.
    from mnistlab.errors import ConfigError

    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    for seed in range(6):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        with pytest.raises(ConfigError, match="float images in \\[0, 1\\]"):
            mix_batch(x, torch.arange(4), MixupConfig(alpha=0.2, cutmix_alpha=1.0))
        assert torch.equal(torch.get_rng_state(), state)  # refused before anything was drawn
    mixed, partner, share = mix_batch(x, torch.arange(4), MixupConfig(cutmix_alpha=1.0))  # a box: exact in uint8
    assert mixed.dtype == torch.uint8 and ((mixed == x) | (mixed == x[partner])).all()


# ---- test-time shifts ---------------------------------------------------------------------------------------


def _shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[i, j] = x[i - dy, j - dx], 0 (the datasets' black background) where that is outside the image."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j] = x[..., i - dy, j - dx]
    return out


@pytest.mark.parametrize("shift", [1, 2, 4])
def test_tta_views_are_the_image_and_its_shifts_with_black_filling_in(shift):
    x = torch.randint(1, 256, (2, 1, 6, 9), dtype=torch.uint8)  # no 0 inside: the fill is seen
    views = tta_views(x, shift)
    want = [x] + [_shifted(x, dx * k, dy * k) for k in range(1, shift + 1)
                  for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    assert len(views) == 1 + 4 * shift
    for got, ref in zip(views, want):
        assert got.dtype == torch.uint8 and torch.equal(got, ref)


def test_the_tta_loss_of_a_confidently_wrong_model_is_not_capped():
    # The mean of the views' float32 probabilities underflowed to 0 for the true class, and its log was clamped
    # at 1e-12: the loss came out 27.63 where every view's own is 200. Averaged in log space it is 200.
    from torch import nn

    from mnistlab.data import Split
    from mnistlab.training.evaluate import evaluate

    class Sure(nn.Module):  # logits [0, 200] whatever the image: class 1 at probability 1 - e^-200
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, 200.0]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 2)

    split = Split(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    plain, tta = evaluate(Sure(), split), evaluate(Sure(), split, tta_shift=1)
    assert plain.loss == pytest.approx(200.0) and tta.loss == pytest.approx(200.0)
    assert tta.accuracy == plain.accuracy == 0.0
