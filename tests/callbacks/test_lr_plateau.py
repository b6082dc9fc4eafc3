"""ReduceLROnPlateau driven with literal metric sequences, and once through the real Trainer."""

import logging

import pytest

from fake_trainer import FakeTrainer, drive, epochs, roundtrip
from mnistlab.callbacks import CallbackList, ReduceLROnPlateau


def test_cooldown_and_min_lr(caplog):
    # lr 0.1, factor 0.1, patience 2, cooldown 1, min_lr 1e-4; val_loss never improves after epoch 1.
    # t=1 best; t=2 wait 1; t=3 wait 2 -> 0.1 -> 0.01, cooldown 1
    # t=4 cooldown (not counted); t=5 wait 1; t=6 wait 2 -> 0.001
    # t=7 cooldown; t=8, 9 -> 1e-4 (= min_lr)
    # t=10 cooldown; t=11, 12 -> max(1e-5, 1e-4) = 1e-4: no change, nothing logged
    trainer = FakeTrainer(lr=0.1)
    cb = ReduceLROnPlateau(factor=0.1, patience=2, cooldown=1, min_lr=1e-4)
    with caplog.at_level(logging.INFO, logger="mnistlab"):
        drive([cb], epochs(val_loss=[1.0] * 12), trainer)
    assert [c["epoch"] for c in cb.changes] == [3, 6, 9]
    assert trainer.lrs_set == pytest.approx([1e-2, 1e-3, 1e-4])
    assert trainer.lr == pytest.approx(1e-4)
    assert "epoch 3: reducing learning rate 1.0e-01 -> 1.0e-02 (val_loss did not improve for 2 epochs)" in caplog.text
    assert caplog.text.count("reducing learning rate") == 3


def test_without_cooldown_counting_restarts_at_once():
    # patience 2, cooldown 0: reductions at 3, 5, 7
    trainer = FakeTrainer(lr=1.0)
    cb = ReduceLROnPlateau(factor=0.5, patience=2)
    drive([cb], epochs(val_loss=[1.0] * 7), trainer)
    assert [c["epoch"] for c in cb.changes] == [3, 5, 7]
    assert trainer.lrs_set == [0.5, 0.25, 0.125]


def test_an_improvement_restarts_the_count():
    # patience 2: t=2 bad (1), t=3 improves (0), t=4 bad (1), t=5 bad (2) -> reduce at 5
    cb = ReduceLROnPlateau(patience=2, threshold=0)
    drive([cb], epochs(val_loss=[1.0, 1.1, 0.9, 0.95, 0.92]), FakeTrainer())
    assert [c["epoch"] for c in cb.changes] == [5]


@pytest.mark.parametrize("mode, reductions", [("rel", [2]), ("abs", [])])
def test_relative_and_absolute_threshold(mode, reductions):
    # best 1.0, then 0.95. rel 0.1: must go below 1.0 * (1 - 0.1) = 0.9 -> no improvement -> reduce (patience 1);
    # abs 0.01: must go below 1.0 - 0.01 = 0.99 -> improvement.
    threshold = 0.1 if mode == "rel" else 0.01
    cb = ReduceLROnPlateau(patience=1, threshold=threshold, threshold_mode=mode)
    drive([cb], epochs(val_loss=[1.0, 0.95]), FakeTrainer())
    assert [c["epoch"] for c in cb.changes] == reductions


@pytest.mark.parametrize("mode, reductions", [("rel", []), ("abs", [2])])
def test_relative_threshold_scales_with_a_best_far_from_one(mode, reductions):
    # With best = 1.0 (above) rel and abs coincide; at best 0.05 they must not. The same threshold 0.1:
    # rel: below 0.05 * (1 - 0.1) = 0.045 -> 0.044 improves, no reduction;
    # abs: below 0.05 - 0.1 = -0.05 -> 0.044 does not improve -> reduce at epoch 2 (patience 1).
    cb = ReduceLROnPlateau(patience=1, threshold=0.1, threshold_mode=mode)
    drive([cb], epochs(val_loss=[0.05, 0.044]), FakeTrainer())
    assert [c["epoch"] for c in cb.changes] == reductions
    assert cb.best == (0.044 if mode == "rel" else 0.05)


def test_patience_zero_reduces_at_the_first_epoch_without_improvement():
    # As Keras and PyTorch: patience 0 reduces at once on a bad epoch, but never on an improving one
    # (epochs 1, 2 and 4 improve; epoch 3 does not). A bare `wait >= patience` would reduce every epoch.
    trainer = FakeTrainer(lr=0.1)
    cb = ReduceLROnPlateau(factor=0.5, patience=0, threshold=0)
    drive([cb], epochs(val_loss=[1.0, 0.9, 0.95, 0.8]), trainer)
    assert [c["epoch"] for c in cb.changes] == [3]
    assert trainer.lrs_set == [0.05]


def test_max_mode_for_accuracy():
    cb = ReduceLROnPlateau(monitor="val_accuracy", patience=1, threshold=0)
    assert cb.mode == "max"
    drive([cb], epochs(val_accuracy=[0.9, 0.95, 0.94]), FakeTrainer())
    assert [c["epoch"] for c in cb.changes] == [3]


def test_resume_in_cooldown_decides_as_uninterrupted():
    # patience 2, cooldown 2: reductions at 3 and 7 (t=4, 5 cooldown; t=6, 7 count).
    rows = epochs(val_loss=[1.0] * 9)
    make = lambda: ReduceLROnPlateau(factor=0.1, patience=2, cooldown=2)  # noqa: E731
    full_cb, full = make(), FakeTrainer(lr=0.1)
    drive([full_cb], rows, full)
    assert [c["epoch"] for c in full_cb.changes] == [3, 7]

    cb, first = make(), FakeTrainer(lr=0.1)
    drive([cb], rows[:4], first)  # stopped inside the cooldown: one epoch of it left
    state = roundtrip(CallbackList([cb]).state_dict())
    resumed = FakeTrainer(lr=first.lr)  # the trainer restores its own lr scale
    resumed.epoch = 4
    cb2 = make()
    drive([cb2], rows[4:], resumed, state=state)
    assert cb2.changes == full_cb.changes
    assert resumed.lr == full.lr


def test_a_new_monitor_on_resume_keeps_the_rate_changes_but_not_the_old_best():
    cb = ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)
    drive([cb], epochs(val_accuracy=[0.99, 0.98, 0.97]), FakeTrainer(lr=0.1))  # a reduction at epoch 2 or 3
    assert cb.changes and cb.best == 0.99
    state = roundtrip(CallbackList([cb]).state_dict())
    cb2 = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    cb2.load_state_dict(state["user:ReduceLROnPlateau"])
    assert cb2.changes == cb.changes
    assert (cb2.best, cb2.wait) == (None, 0)  # a val_loss of 0.5 is not compared with an accuracy of 0.99


def test_a_reduction_scales_the_schedule_without_undoing_its_step(mnist_small):
    """In the real Trainer, each reduction multiplies the schedule by ``factor``, as PyTorch's StepLR chained
    with its ReduceLROnPlateau does; the step schedule's own drop at the epoch boundary stays."""
    import torch

    from mnistlab.callbacks import Callback
    from mnistlab.config import Config, apply_overrides
    from mnistlab.models import build_model
    from mnistlab.training.fit import Trainer

    class Rates(Callback):
        def __init__(self):
            self.by_epoch = {}

        def on_batch_end(self, step, metrics, trainer):
            self.by_epoch.setdefault(trainer.epoch + 1, set()).add(metrics["lr"])

    cfg = apply_overrides(Config(), [
        "model.name=cnn", "model.channels=[4, 8]", "train.epochs=4", "train.batch_size=1000", "train.device=cpu",
        "train.progress=false", "optimizer.name=sgd", "optimizer.lr=0.1", "schedule.name=step",
        "schedule.gamma=0.1", "schedule.step_epochs=1",
    ])
    torch.manual_seed(0)
    model = build_model("cnn", mean=mnist_small.mean, std=mnist_small.std, **cfg.model.options())
    # "epoch" never improves in min mode: a reduction at the end of every epoch from the second on
    rates = Rates()
    fit = Trainer(model, mnist_small, cfg, callbacks=[ReduceLROnPlateau(monitor="epoch", mode="min", patience=1,
                                                                         factor=0.5), rates]).fit()
    expected = {1: 0.1, 2: 0.01, 3: 0.001 * 0.5, 4: 0.0001 * 0.25}
    assert sorted(rates.by_epoch) == list(expected)
    for epoch, rate in expected.items():  # every step of the epoch ran at that rate
        assert sorted(rates.by_epoch[epoch]) == pytest.approx([rate]), epoch
    assert [row["lr"] for row in fit.history] == pytest.approx(list(expected.values()))
