"""Audit 156: tests that kill the mutants of a hand-made mutation audit of the training loop (``training/fit.py``)
that no other test caught: what callbacks are handed each step and epoch (the step number, the batch loss, the
epoch's metrics and rate, ``trainer.epoch``), ``train_seconds`` and an epoch's seconds, the stop reasons of
``train.max_steps`` against a callback's stop, and the seconds of a run resumed inside an epoch.

Each test trains a quarter-width cnn on 301 real MNIST images and checks against a hand computation in plain
PyTorch (the batches of ``epoch_permutation``, ``F.cross_entropy``). Seconds are counted on a fake clock, which
the test advances by one second a step, so that they are exact (no timing).
"""

from __future__ import annotations

import copy
import importlib
import os
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mnistlab import Config, apply_overrides, build_model, fit
from mnistlab.callbacks import Callback
from mnistlab.config import DataConfig
from mnistlab.data import epoch_permutation, load_data

fit_module = importlib.import_module("mnistlab.training.fit")  # the module (the package exports fit())

BASE = ["train.threads=1", "train.precision=fp32", "train.channels_last=false", "train.progress=false",
        "tensorboard.enabled=false", "train.seed=0", "schedule.name=constant", "optimizer.name=sgd",
        "optimizer.lr=0.05", "train.epochs=2", "train.batch_size=64", "model.name=cnn", "model.width=0.25",
        "model.batch_norm=false", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def data(mnist_root):
    """301 training images: 5 batches of 64 an epoch, the last of 45."""
    return load_data(DataConfig(dataset="mnist", dir=str(mnist_root), val_size=100, train_limit=301, download=False))


def cfg(*extra: str) -> Config:
    return apply_overrides(Config(), [*BASE, *extra])


def net(data):
    torch.manual_seed(0)
    return build_model("cnn", mean=data.mean, std=data.std, width=0.25, batch_norm=False, dropout=0.0)


def batches(n: int, size: int, epoch: int, seed: int = 0):
    """The trainer's batches of an epoch as documented: the epoch's permutation in slices of ``size`` (a remainder
    under 2 would join the last; 301 = 4 x 64 + 45 leaves none)."""
    order = epoch_permutation(n, seed, epoch)
    return [order[i:i + size] for i in range(0, n, size)]


class FakeClock:
    """``time`` for fit.py: ``perf_counter`` stands still until ``tick`` moves it."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    def tick(self, seconds: float = 1.0):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(fit_module, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class Recorder(Callback):
    """Keeps what the trainer hands the callbacks, and the model before each step and at each epoch's end."""

    def __init__(self, clock=None):
        self.clock = clock
        self.before: list[torch.nn.Module] = []
        self.steps: list[tuple[int, int, float, float]] = []  # (step given, trainer.step, loss, lr)
        self.epochs: list[tuple[int, int, dict]] = []  # (epoch given, trainer.epoch, metrics)
        self.at_epoch_end: list[torch.nn.Module] = []

    def on_batch_begin(self, step, trainer):
        self.before.append(copy.deepcopy(trainer.model))
        if self.clock is not None:
            self.clock.tick()  # one second a step

    def on_batch_end(self, step, metrics, trainer):
        self.steps.append((step, trainer.step, metrics["loss"], metrics["lr"]))

    def on_epoch_end(self, epoch, metrics, trainer):
        self.epochs.append((epoch, trainer.epoch, dict(metrics)))
        self.at_epoch_end.append(copy.deepcopy(trainer.model))


def test_the_step_and_epoch_metrics_handed_to_callbacks_are_the_hand_computed_ones(data):
    rec = Recorder()
    result = fit(net(data), data, cfg("schedule.name=cosine", "schedule.warmup_epochs=0"), callbacks=[rec])
    assert (result.epochs, result.steps, result.stopped_by) == (2, 10, "max_epochs")
    # on_batch_end gets the number of steps taken, the step just taken included, as trainer.step says
    assert [(s, t) for s, t, _, _ in rec.steps] == [(i, i) for i in range(1, 11)]
    x_all, y_all = data.train.images.float() / 255, data.train.labels
    rows = 0
    for epoch in (1, 2):
        loss_sum = correct = seen = 0.0
        for b, idx in enumerate(batches(len(data.train), 64, epoch)):
            i = (epoch - 1) * 5 + b
            with torch.no_grad():
                logits = rec.before[i].train()(x_all[idx])
            loss = F.cross_entropy(logits, y_all[idx]).item()
            # the batch's mean loss, on the weights before the step
            assert rec.steps[i][2] == pytest.approx(loss, rel=1e-5, abs=1e-6), i
            loss_sum += loss * len(idx)
            correct += float((logits.argmax(1) == y_all[idx]).sum())
            seen += len(idx)
        rows += seen
        given, trainer_epoch, metrics = rec.epochs[epoch - 1]
        assert (given, trainer_epoch, metrics["epoch"]) == (epoch, epoch, epoch)  # trainer.epoch counts this one
        assert metrics["train_loss"] == pytest.approx(loss_sum / seen, rel=1e-6)
        assert metrics["train_accuracy"] == pytest.approx(correct / seen)
        assert metrics["train_error"] == pytest.approx(1 - correct / seen)
        with torch.no_grad():
            val_logits = rec.at_epoch_end[epoch - 1].eval()(data.val.images.float() / 255)
        val_acc = float((val_logits.argmax(1) == data.val.labels).float().mean())
        assert metrics["val_loss"] == pytest.approx(F.cross_entropy(val_logits, data.val.labels).item(), rel=1e-5)
        assert metrics["val_accuracy"] == pytest.approx(val_acc)
        assert metrics["val_error"] == pytest.approx(1 - val_acc)
        # the epoch's rate is that of its last step (cosine: it differs from the next step's)
        assert metrics["lr"] == rec.steps[epoch * 5 - 1][3]
    assert rows == 2 * len(data.train)
    assert rec.steps[4][3] != rec.steps[5][3]
    assert result.history == [m for _, _, m in rec.epochs]


def test_train_seconds_and_an_epochs_seconds_count_the_steps(data, clock):
    rec = Recorder(clock)
    result = fit(net(data), data, cfg(), callbacks=[rec])
    assert result.train_seconds == 10.0
    assert [row["seconds"] for row in result.history] == [5.0, 5.0]


def test_a_diverged_run_counts_the_seconds_of_its_steps(data, clock):
    class Diverge(Recorder):
        def on_batch_begin(self, step, trainer):
            super().on_batch_begin(step, trainer)
            if step == 7:  # the 8th step, 3rd of epoch 2: its loss is NaN
                trainer.set_weights({k: torch.full_like(v, float("nan")) for k, v in trainer.get_weights().items()})

    result = fit(net(data), data, cfg(), callbacks=[Diverge(clock)])
    assert result.stopped_by == "non_finite_loss" and result.steps == 7, result.stop_reason
    assert "at epoch 2, step 8 (batch 3 of 5)" in result.stop_reason
    assert result.train_seconds == 8.0  # 5 of epoch 1, and the 3 of epoch 2 up to the step that diverged


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, metrics, trainer):
        if epoch == self.epoch:
            trainer.request_stop("enough for today", by="my_rule")


@pytest.mark.parametrize("max_steps, stop_at, expected", [
    (7, None, ("max_steps", 2, 7)),  # the last epoch cut short by max_steps: stopped by it, not by max epochs
    (5, None, ("max_steps", 1, 5)),  # max_steps at the end of epoch 1 of 2
    (10, None, ("max_epochs", 2, 10)),  # both at once: the epochs are all done
    (5, 1, ("my_rule", 1, 5)),  # a callback's stop in the epoch max_steps ends stays the reason
])
def test_max_steps_and_a_callbacks_stop_give_the_stop_reason(data, max_steps, stop_at, expected):
    callbacks = [] if stop_at is None else [StopAt(stop_at)]
    result = fit(net(data), data, cfg(f"train.max_steps={max_steps}"), callbacks=callbacks)
    assert (result.stopped_by, result.epochs, result.steps) == expected, result.stop_reason
    assert len(result.history) == result.epochs
    if stop_at is not None:
        assert result.stop_reason == "enough for today"
    elif expected[0] == "max_steps":
        assert result.stop_reason == f"max steps reached ({max_steps})"


class Rates(Callback):
    """Each step's rate, a clock tick a step, and a SIGTERM after step ``interrupt_at``."""

    def __init__(self, clock, interrupt_at=None):
        self.clock, self.interrupt_at, self.lrs = clock, interrupt_at, []

    def on_batch_begin(self, step, trainer):
        self.clock.tick()

    def on_batch_end(self, step, metrics, trainer):
        self.lrs.append((step, metrics["lr"]))
        if step == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)  # (SIGINT is ignored in a background job)


def test_a_run_resumed_inside_an_epoch_keeps_its_schedule_and_its_seconds(mnist_root, tmp_path, clock):
    from mnistlab import train
    from mnistlab.training import TrainingInterrupted

    run_cfg = cfg(f"data.dir={mnist_root}", "data.val_size=100", "data.train_limit=301", "train.epochs=3",
                  "data.test_limit=2000",  # the final test on 2,000 images: a fifth of its time
                  "schedule.name=cosine", "schedule.warmup_epochs=0")
    whole = Rates(clock)
    full = train(run_cfg, out=tmp_path / "full", quiet=True, callbacks=[whole])
    assert full.fit.train_seconds == 15.0
    first, second = Rates(clock, interrupt_at=7), Rates(clock)  # epoch 2, after its batch 2 of 5
    with pytest.raises(TrainingInterrupted):
        train(run_cfg, out=tmp_path / "cut", quiet=True, callbacks=[first])
    cut = train(run_cfg, resume=tmp_path / "cut", quiet=True, callbacks=[second])
    # the rates of the resumed steps are those of the same steps in the run not interrupted: the schedule spans
    # 15 steps, and epoch 3 starts at step 10 (not 7 + 2 epochs)
    assert first.lrs + second.lrs == whole.lrs
    assert cut.fit.steps == 15 and cut.fit.epochs == 3
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(cut.fit.history) == drop(full.fit.history)
    # a second a step, before the interruption and after: epoch 2 took its 2 + 3 steps' seconds
    assert cut.fit.train_seconds == 15.0
    assert [row["seconds"] for row in cut.fit.history] == [5.0, 5.0, 5.0]


def test_weights_that_diverge_in_an_epochs_last_step_stop_the_run_at_its_validation(data):
    class BreakAfterLastStep(Callback):
        def on_batch_end(self, step, metrics, trainer):
            if step == 5:  # the last step of epoch 1: its loss was finite, the weights it leaves are not
                trainer.set_weights({k: torch.full_like(v, float("nan")) for k, v in trainer.get_weights().items()})

    result = fit(net(data), data, cfg(), callbacks=[BreakAfterLastStep()])
    assert result.stopped_by == "non_finite_loss", result.stop_reason
    assert result.stop_reason.startswith("non-finite validation loss (nan) at epoch 1, after step 5")
    assert (result.epochs, result.steps, result.history) == (0, 5, [])
