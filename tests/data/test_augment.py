"""Batched augmentation: shapes and labels kept, images changed, reproducible, never at evaluation."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from mnistlab.config import AugmentConfig, Config, apply_overrides
from mnistlab.data.augment import affine_matrices, augment, elastic_offsets, shift_images
from mnistlab.data.batching import to_float
from mnistlab.errors import ConfigError
from mnistlab.models import build_model
from mnistlab.training.evaluate import evaluate
from mnistlab.training.fit import Trainer

ON = AugmentConfig(enabled=True, rotation=15.0, scale=0.1, shift=0.1, shear=10.0, elastic_alpha=6.0)


@pytest.fixture(scope="module")
def digits(mnist_small):
    return to_float(mnist_small.train.images[:256])


def test_augmented_batches_keep_shape_dtype_and_range_and_differ_per_image(digits):
    torch.manual_seed(0)
    out = augment(digits, ON)
    assert out.shape == digits.shape and out.dtype == digits.dtype and out.device == digits.device
    assert 0.0 <= out.min() and out.max() <= 1.0
    changed = (out - digits).abs().flatten(1).amax(1)
    assert (changed > 0.1).all()  # every image moved
    # one transform per image, not one per batch: the same digit twice is transformed two ways
    pair = augment(torch.stack([digits[0], digits[0]]), ON)
    assert not torch.allclose(pair[0], pair[1])


def test_digits_stay_in_the_frame_and_keep_their_ink(digits):
    torch.manual_seed(1)
    out = augment(digits, ON)
    ink_before, ink_after = digits.sum((1, 2, 3)), out.sum((1, 2, 3))
    ratio = ink_after / ink_before
    # zoom of up to 10% changes the area by up to 21%; little may fall off the 28x28 frame
    assert ratio.min() > 0.7 and ratio.max() < 1.35, (ratio.min(), ratio.max())


def test_the_identity_settings_change_nothing_and_disabled_returns_the_batch_itself(digits):
    identity = AugmentConfig(enabled=True, rotation=0.0, scale=0.0, shift=0.0, shear=0.0)
    state = torch.random.get_rng_state()
    # Exactly the batch (grid_sample's identity rounds by up to 3e-6), and no random numbers drawn: the
    # dropout of a run with every range at 0 is that of a run without [augment].
    assert augment(digits, identity) is digits
    assert torch.equal(torch.random.get_rng_state(), state)
    assert augment(digits, AugmentConfig(enabled=False)) is digits


def test_hflip_mirrors_half_the_images_exactly_and_warns_on_digits(digits):
    # Left-right flips suit Fashion-MNIST (a mirrored shirt is a shirt); a Keras or torchvision user reaches
    # for them first, and mnistlab had none.
    from mnistlab.training.run import settings_warnings

    flips = AugmentConfig(enabled=True, rotation=0.0, scale=0.0, shift=0.0, shear=0.0, hflip=True)
    torch.manual_seed(0)
    out = augment(digits, flips)
    mirrored = torch.tensor([torch.equal(o, d.flip(-1)) for o, d in zip(out, digits)])
    kept = torch.tensor([torch.equal(o, d) for o, d in zip(out, digits)])
    assert (mirrored | kept).all()  # each image exactly as it was or exactly mirrored, no resampling
    assert 96 < int(mirrored.sum()) < 160  # half of 256, give or take 4 standard deviations
    torch.manual_seed(0)
    assert torch.equal(augment(digits, flips), out)  # drawn from the global RNG, which checkpoints keep
    assert augment(digits, AugmentConfig(enabled=False, hflip=True)) is digits  # [augment] off: nothing
    # on digits (or Kuzushiji characters) a mirrored image is another symbol: said when the run starts
    cfg = apply_overrides(Config(), ["augment.enabled=true", "augment.hflip=true"])
    assert settings_warnings(cfg) == ["augment.hflip mirrors mnist's training images, where a mirrored one is "
                                      "another symbol or none (it suits fashion-mnist)"]
    assert settings_warnings(apply_overrides(cfg, ["data.dataset=fashion-mnist"])) == []
    # without [augment] enabled no image is flipped: hflip alone did nothing, without a word
    assert settings_warnings(apply_overrides(Config(), ["augment.hflip=true", "augment.rotation=5"])) == [
        "augment.rotation, augment.hflip are set, but [augment] enabled = false: no image is transformed (flips "
        "alone: enabled = true with rotation, scale and shift 0)"]


def test_the_same_rng_state_gives_the_same_transforms(digits):
    torch.manual_seed(5)
    a = augment(digits[:8], ON)
    torch.manual_seed(5)
    b = augment(digits[:8], ON)
    torch.manual_seed(6)
    c = augment(digits[:8], ON)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_affine_parameters_stay_within_their_ranges():
    cfg = AugmentConfig(enabled=True, rotation=0.0, scale=0.2, shift=0.0, shear=0.0)
    torch.manual_seed(0)
    m = affine_matrices(1000, cfg, torch.device("cpu"))
    zoom = 1 / m[:, 0, 0]  # no rotation or shear: the diagonal is 1 / scale
    assert zoom.min() >= 0.8 and zoom.max() <= 1.2 and zoom.std() > 0.05
    torch.testing.assert_close(m[:, 0, 0], m[:, 1, 1])
    cfg = AugmentConfig(enabled=True, rotation=0.0, scale=0.0, shift=0.25, shear=0.0)
    t = affine_matrices(1000, cfg, torch.device("cpu"))[:, :, 2]
    assert t.abs().max() <= 0.5 and t.abs().max() > 0.4  # a quarter side is 0.5 grid units


def test_shift_images_moves_the_ink_by_whole_pixels(digits):
    x = digits[:4]
    moved = shift_images(x, 3, -2)  # right 3, up 2
    torch.testing.assert_close(moved[..., :-2, 3:], x[..., 2:, :-3])
    assert (moved[..., :, :3] == 0).all() and (moved[..., -2:, :] == 0).all()


@pytest.mark.parametrize("sigma", [0.01, 10.0, 1e6, 1e308])  # 1e308: ceil(3 * sigma) of inf raised
def test_elastic_fields_of_any_smoothness_are_finite(sigma):
    # sigma 10 needs 31 taps a side, more than the image has (the reflect padding raised); 0.01, the least the
    # config takes, is a single tap (below it, 1e-50 is 0 in float32 and the Gaussian's centre was 0/0)
    cfg = AugmentConfig(enabled=True, rotation=0.0, scale=0.0, shift=0.0, elastic_alpha=34.0, elastic_sigma=sigma)
    torch.manual_seed(0)
    out = augment(torch.rand(4, 1, 28, 28), cfg)
    assert out.shape == (4, 1, 28, 28) and torch.isfinite(out).all()


def _elastic_by_convolution(n: int, size: tuple[int, int], cfg: AugmentConfig) -> torch.Tensor:
    """Simard's field the direct way: the same noise, reflect-padded and convolved with the Gaussian."""
    h, w = size
    radius = max(1, min(math.ceil(3 * cfg.elastic_sigma), min(h, w) - 1))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / cfg.elastic_sigma) ** 2)
    kernel = kernel / kernel.sum()
    noise = torch.rand(n * 2, 1, h, w) * 2 - 1
    noise = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return noise.view(n, 2, h, w).permute(0, 2, 3, 1) * torch.tensor([2.0 / w, 2.0 / h]) * cfg.elastic_alpha


@pytest.mark.parametrize("sigma", [0.5, 4.0, 20.0])
@pytest.mark.parametrize("size", [(28, 28), (20, 32), (2, 5)])
def test_elastic_smoothing_by_matrices_equals_the_padded_convolution(sigma, size):
    # the fast path smooths with two matrix products; the field must be the convolution's, reflections included
    cfg = AugmentConfig(enabled=True, elastic_alpha=34.0, elastic_sigma=sigma)
    torch.manual_seed(3)
    fast = elastic_offsets(6, size, cfg, torch.device("cpu"))
    torch.manual_seed(3)
    torch.testing.assert_close(fast, _elastic_by_convolution(6, size, cfg), rtol=1e-5, atol=1e-6)
    assert fast.abs().amax() > 0.01  # a real field, not zeros on both sides


def test_bad_settings_are_config_errors():
    for override, message in [
        ("augment.scale=1.5", "augment.scale must be in [0, 1)"),
        ("augment.rotation=-3", "augment.rotation must be zero or more"),
        ("augment.shear=90", "augment.shear must be below 90 (degrees), got 90"),
        ("augment.rotation=181", "augment.rotation must be at most 180 (degrees), got 181"),
        ("augment.shift=1.5", "augment.shift must be at most 1 (the whole side), got 1.5"),
        ("augment.elastic_sigma=0", "augment.elastic_sigma must be greater than zero"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_overrides(Config(), [override])


def _train(data, *overrides):
    cfg = apply_overrides(Config(), [
        "model.name=cnn", "model.channels=[4, 8]", "train.epochs=1", "train.batch_size=100", "train.device=cpu",
        "train.progress=false", *overrides,
    ])
    torch.manual_seed(0)
    model = build_model("cnn", mean=data.mean, std=data.std, **cfg.model.options())
    return Trainer(model, data, cfg).fit()


def test_training_sees_augmented_images_but_validation_does_not(mnist_small):
    plain = _train(mnist_small)
    augmented = _train(mnist_small, "augment.enabled=true")
    # the same seed and batches: only the augmentation differs, and it changes what is learned
    assert not torch.equal(plain.model.features[0].weight, augmented.model.features[0].weight)
    # the validation metrics of the epoch are those of the clean validation images
    clean = evaluate(augmented.model, mnist_small.val)
    assert augmented.history[-1]["val_accuracy"] == clean.accuracy
    assert augmented.history[-1]["val_loss"] == pytest.approx(clean.loss, rel=1e-6)
