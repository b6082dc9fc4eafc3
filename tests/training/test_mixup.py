"""[mixup]: mixup and CutMix blend each training batch with a shuffled copy of itself, and the loss is the
cross-entropy against the labels in the same shares; runs with them learn, resume exactly, and train in
micro-batches as in whole batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnistlab.config import Config, MixupConfig, apply_overrides
from mnistlab.errors import ConfigError
from mnistlab.models import build_model
from mnistlab.training import read_checkpoint, train
from mnistlab.training.fit import Trainer
from mnistlab.training.mixing import mix_batch


def numbered(n: int, size: int = 28) -> torch.Tensor:
    """n images, image i filled with the value i: a pixel of the mix names the image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).clone()


def test_mixup_blends_each_image_with_its_partner_by_one_share():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16)
    shares = []
    for _ in range(50):
        mixed, partner, share = mix_batch(x, y, MixupConfig(alpha=0.4))
        assert sorted(partner.tolist()) == list(range(16))  # a permutation of the batch's labels
        assert torch.allclose(mixed, share * x + (1 - share) * x[partner], atol=1e-6)
        shares.append(share)
    assert all(0 <= s <= 1 for s in shares) and len(set(shares)) == 50
    # Beta(0.4, 0.4) piles up near 0 and 1: most batches are mostly one image
    assert sum(min(s, 1 - s) < 0.2 for s in shares) > 25


@pytest.mark.parametrize("crop", [0, 2])
def test_cutmix_pastes_one_box_of_the_partner_and_its_share_is_the_area_left(crop):
    torch.manual_seed(1)
    x, y = numbered(8), torch.arange(8)
    view = (28 - 2 * crop) ** 2
    for _ in range(40):
        mixed, partner, share = mix_batch(x, y, MixupConfig(cutmix_alpha=1.0), crop=crop)
        for i in range(8):
            pasted = mixed[i, 0] == partner[i]
            if partner[i] == i:
                continue  # an image paired with itself shows no box
            assert (pasted | (mixed[i, 0] == i)).all()  # every pixel is its own or its partner's
            rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            if len(rows):  # one solid box
                assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
                assert rows[0] >= crop and rows[-1] < 28 - crop and cols[0] >= crop and cols[-1] < 28 - crop
            assert share == pytest.approx(1 - int(pasted.sum()) / view)  # what the model sees of each


def test_with_both_on_each_batch_is_mixed_one_way_or_the_other():
    torch.manual_seed(2)
    x, y = numbered(8), torch.arange(8)
    kinds = []
    for _ in range(60):
        mixed, _, share = mix_batch(x, y, MixupConfig(alpha=1.0, cutmix_alpha=1.0))
        kinds.append("cutmix" if torch.equal(mixed, mixed.round()) else "mixup")  # CutMix copies whole values
    assert 15 < kinds.count("cutmix") < 45


@pytest.mark.parametrize(("override", "message"), [
    ("mixup.alpha=-0.1", "mixup.alpha must be zero or more, got -0.1"),
    ("mixup.cutmix_alpha=nan", "mixup.cutmix_alpha must be a finite number"),
    ("mixup.alpha=1e-5", r"mixup.alpha must be 0 \(off\) or at least 0.001, got 1e-05"),
    # Beta(1e308, 1e308) drew 0 every time (its gamma draws' sum overflowed): every image became its partner
    ("mixup.cutmix_alpha=1e308", r"mixup.cutmix_alpha must be at most 1e\+06 .*, got 1e\+308"),
])
def test_a_bad_alpha_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_loss_is_the_cross_entropy_against_the_blended_labels(mnist_small, smoothing):
    cfg = apply_overrides(Config(), ["train.threads=1", f"train.label_smoothing={smoothing}"])
    trainer = Trainer(build_model("cnn", width=0.25), mnist_small, cfg)
    logits, y, partner = torch.randn(6, 10), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([5, 4, 3, 2, 1, 0])
    blended = 0.3 * F.one_hot(y, 10).float() + 0.7 * F.one_hot(partner, 10).float()
    expected = F.cross_entropy(logits, blended, label_smoothing=smoothing)  # soft targets, as timm and Keras mix
    assert trainer._loss(logits, y, 6, (partner, 0.3)).item() == pytest.approx(expected.item(), rel=1e-6)
    # a rank's or a part's rows: their share of the batch's mean, as without mixing
    assert (trainer._loss(logits[:2], y[:2], 6, (partner[:2], 0.3)) + trainer._loss(
        logits[2:], y[2:], 6, (partner[2:], 0.3))).item() == pytest.approx(expected.item(), rel=1e-6)


def small(root, *overrides):
    return apply_overrides(Config(), [
        f"data.dir={root}", "data.train_limit=2000", "data.val_size=500", "model.name=cnn", "model.width=0.5",
        "train.batch_size=64", "train.threads=1", "tensorboard.enabled=false", "train.epochs=1", *overrides])


@pytest.mark.parametrize("mix", ["mixup.alpha=0.2", "mixup.cutmix_alpha=1.0"])
def test_a_mixed_run_learns_mnist(mnist_root, tmp_path, mix):
    result = train(small(mnist_root, mix), out=tmp_path / "run", quiet=True)
    # 2,000 real images, one epoch: mixup 90.8%, CutMix 85.6% here; without mixing 91.6%
    assert result.fit.history[-1]["val_accuracy"] > 0.8


def test_a_mixed_run_resumes_as_one_that_was_not_stopped_and_trains_so_in_parts(mnist_root, tmp_path):
    # The shares, partners and boxes come from the RNG that checkpoints store.
    cfg = small(mnist_root, "mixup.alpha=0.4", "mixup.cutmix_alpha=1.0", "data.train_limit=600",
                "schedule.name=constant", "train.epochs=2", "train.precision=fp32")
    whole = train(cfg, out=tmp_path / "whole", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "parts", quiet=True)
    train(cfg, resume=tmp_path / "parts", quiet=True)
    a, b = (read_checkpoint(tmp_path / run / "last.ckpt") for run in ("whole", "parts"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    def without_seconds(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert without_seconds(a["history"]) == without_seconds(b["history"])
    # train.micro_batch_size: the partners go with their rows into each part
    micro = train(apply_overrides(cfg, ["train.micro_batch_size=20"]), out=tmp_path / "micro", quiet=True)
    c = read_checkpoint(tmp_path / "micro" / "last.ckpt")
    assert max((a["model"][k] - c["model"][k]).abs().max().item() for k in a["model"]) < 1e-5
    for h1, h2 in zip(whole.fit.history, micro.fit.history, strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], abs=1e-5)
