"""train.precision = fp16: float16 autocast with PyTorch's dynamic loss scale (GradScaler), on the CPU here.

This CPU has no fp16 arithmetic, so PyTorch emulates it (slowly): the runs are a few hundred images.
The loss scale starts at 2**24 instead of 2**16, so that the first steps overflow and are skipped, and
the scale's state is something a resume has to carry over.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from mnistlab.callbacks import Callback
from mnistlab.config import Config, apply_overrides
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.machine import FP16_FLAGS, cpuinfo_has
from mnistlab.training import read_checkpoint, train
from mnistlab.training.checkpoint import save_checkpoint

fit = sys.modules["mnistlab.training.fit"]  # the module; mnistlab.training's ``fit`` is its function

HIGH_SCALE = 2.0**24


@pytest.fixture
def high_scale(monkeypatch):
    monkeypatch.setattr(fit, "grad_scaler", lambda device: torch.amp.GradScaler(device.type, init_scale=HIGH_SCALE))


def small_cfg(root, *overrides):
    return apply_overrides(Config(), [
        f"data.dir={root}", "data.train_limit=400", "data.val_size=200", "model.name=cnn", "model.channels=[8, 16]",
        "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
        "train.batch_size=50", "train.threads=1", "train.precision=fp16", "tensorboard.enabled=false",
        "schedule.name=constant", "optimizer.lr=0.003", *overrides,
    ])


def test_fp16_resumes_exactly_with_the_loss_scale_it_had(mnist_root, tmp_path, high_scale):
    cfg = small_cfg(mnist_root)
    full = train(apply_overrides(cfg, ["train.epochs=2"]), out=tmp_path / "full", quiet=True)
    train(apply_overrides(cfg, ["train.epochs=1"]), out=tmp_path / "half", quiet=True)
    half_state = read_checkpoint(tmp_path / "half" / "last.ckpt")
    resumed = train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "half", quiet=True)

    # The first steps overflowed: the scale came down from 2**24 (a resume from 2**24 would skip them again).
    assert full.summary["skipped_steps"] >= 1
    assert half_state["grad_scaler"]["scale"] < HIGH_SCALE
    a, b = read_checkpoint(tmp_path / "full" / "last.ckpt"), read_checkpoint(tmp_path / "half" / "last.ckpt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["grad_scaler"] == b["grad_scaler"]
    assert resumed.summary["skipped_steps"] == full.summary["skipped_steps"]
    assert resumed.summary["precision"] == "fp16"
    # it learned: 10 classes, 400 images, 2 epochs
    assert full.summary["test_accuracy"] > 0.5
    assert full.summary["test_accuracy"] == resumed.summary["test_accuracy"]


def test_gradient_clipping_in_fp16_measures_the_true_gradients(mnist_root, tmp_path):
    """The norm is of the unscaled gradients: a threshold above it leaves the steps as they were (the scaled
    gradients, 65,536 times larger, would be clipped to a thousandth)."""
    cfg = small_cfg(mnist_root, "train.epochs=1")
    plain = train(cfg, out=tmp_path / "plain", quiet=True)
    clipped = train(apply_overrides(cfg, ["train.grad_clip=1000"]), out=tmp_path / "clipped", quiet=True)
    a, b = plain.fit.model.state_dict(), clipped.fit.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and a threshold below the true norm does act
    tight = train(apply_overrides(cfg, ["train.grad_clip=0.01"]), out=tmp_path / "tight", quiet=True)
    c = tight.fit.model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_damaged_loss_scale_in_a_checkpoint_is_refused(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=100")
    train(cfg, out=tmp_path / "run", quiet=True)
    state = read_checkpoint(tmp_path / "run" / "last.ckpt")
    state["grad_scaler"] = {**state["grad_scaler"], "scale": math.nan}
    save_checkpoint(tmp_path / "run" / "last.ckpt", state)
    with pytest.raises(CheckpointError, match="grad_scaler"):
        train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "run", quiet=True)


def test_a_bf16_run_resumed_in_fp16_starts_a_loss_scale_and_says_so(mnist_root, tmp_path, capsys):
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=100", "train.precision=bf16")
    train(cfg, out=tmp_path / "run", quiet=True)
    assert read_checkpoint(tmp_path / "run" / "last.ckpt")["grad_scaler"] is None
    resumed = train(apply_overrides(cfg, ["train.epochs=2", "train.precision=fp16"]), resume=tmp_path / "run",
                    report=False)
    assert "train.precision was bf16, now fp16: the rest of the run trains in fp16" in capsys.readouterr().out
    assert resumed.summary["precision"] == "fp16"
    assert read_checkpoint(tmp_path / "run" / "last.ckpt")["grad_scaler"]["scale"] > 0


def test_fp16_is_a_precision_and_fp8_is_not():
    assert apply_overrides(Config(), ["train.precision=fp16"]).train.precision == "fp16"
    with pytest.raises(ConfigError, match="fp16"):
        apply_overrides(Config(), ["train.precision=fp8"])


def test_auto_never_picks_fp16_and_fp16_needs_cuda_or_the_cpu():
    assert fit.resolve_precision("fp16", torch.device("cpu")) == "fp16"
    assert fit.resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="fp16 needs CUDA or the CPU"):
        fit.resolve_precision("fp16", torch.device("mps"))


@pytest.mark.parametrize("text, expected", [
    ("flags\t\t: avx512f avx512_bf16 avx512_fp16 amx_bf16\n", True),  # Sapphire Rapids
    ("flags\t\t: avx512f amx_fp16\n", True),
    ("flags\t\t: avx2 f16c avx512_bf16\n", False),  # F16C converts, it does not compute
])
def test_fp16_instructions_are_read_from_the_flags_line(text, expected):
    assert cpuinfo_has(text, FP16_FLAGS) is expected


def test_a_precision_the_hardware_emulates_is_warned_about(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(fit, "native_fp16", lambda: False)
    monkeypatch.setattr(fit, "native_bf16", lambda: False)
    assert "no fp16 arithmetic" in fit.emulated_precision("fp16", cpu)
    assert "7-19x" in fit.emulated_precision("fp16", cpu)
    assert "no bf16 arithmetic" in fit.emulated_precision("bf16", cpu)
    assert fit.emulated_precision("fp32", cpu) is None
    monkeypatch.setattr(fit, "native_fp16", lambda: True)
    monkeypatch.setattr(fit, "native_bf16", lambda: True)
    assert fit.emulated_precision("fp16", cpu) is None
    assert fit.emulated_precision("bf16", cpu) is None
    monkeypatch.setattr(fit, "cuda_native_bf16", lambda device: False)  # a T4
    assert "emulates bf16" in fit.emulated_precision("bf16", cuda)
    assert fit.emulated_precision("fp16", cuda) is None


GOOD_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
               "_growth_tracker": 0}


@pytest.mark.parametrize("change", [
    {"scale": 1e39},  # past float32: GradScaler's first use raised
    {"scale": 1e-300}, {"scale": 0.5},  # 0 in float32, or below the scale at which a run stops
    {"growth_factor": 0.5}, {"growth_factor": 1.0}, {"backoff_factor": 2.0}, {"backoff_factor": 1.0},
    {"backoff_factor": 0.0},  # factors GradScaler's constructor refuses: every step could be skipped unseen
    {"growth_interval": 0}, {"growth_interval": 2**40}, {"_growth_tracker": 2**40},  # its counter is int32
    {"scale": True}, {"growth_interval": 2.5},
])
def test_a_loss_scale_state_that_cannot_train_is_refused(change):
    assert fit._grad_scaler_ok(GOOD_SCALER)
    assert not fit._grad_scaler_ok({**GOOD_SCALER, **change})


def test_more_skipped_steps_than_steps_is_damage(mnist_root, tmp_path):
    cfg = small_cfg(mnist_root, "train.epochs=1", "data.train_limit=100")
    train(cfg, out=tmp_path / "run", quiet=True)
    state = read_checkpoint(tmp_path / "run" / "last.ckpt")
    save_checkpoint(tmp_path / "run" / "last.ckpt", {**state, "skipped_steps": state["step"] + 1})
    with pytest.raises(CheckpointError, match="skipped_steps = 3 of 2 steps"):
        train(apply_overrides(cfg, ["train.epochs=2"]), resume=tmp_path / "run", quiet=True)


def test_gradients_that_overflow_unscaled_stop_the_run_instead_of_skipping_every_step(mnist_root, tmp_path):
    """In fp32 such gradients make the weights NaN and the next loss stops the run; in fp16 the loss scale
    would skip step after step, halving itself to 0, and the run would end 'max epochs reached'."""

    class Poison(Callback):  # a finite loss, and a gradient that no loss scale can bring into range
        def on_train_begin(self, trainer):
            trainer.model.features[0].bias.register_hook(lambda g: torch.full_like(g, float("nan")))

    cfg = small_cfg(mnist_root, "train.epochs=2", "data.train_limit=500", "train.batch_size=20")
    result = train(cfg, out=tmp_path / "run", quiet=True, callbacks=[Poison()])
    assert result.fit.stopped_by == "non_finite_loss"
    assert result.fit.stop_reason.startswith("non-finite gradients at epoch 1, step 17 (batch 17 of 25): in fp16 "
                                             "the loss scale fell below 1 (0.5)")
    assert result.summary["skipped_steps"] == 17  # every step: 2**16 halved 17 times
    assert result.fit.steps == 16 and result.fit.epochs == 0
