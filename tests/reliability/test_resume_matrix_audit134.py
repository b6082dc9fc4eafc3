"""Resume audit 134: runs interrupted and resumed with features combined end exactly as uninterrupted ones.

In-process runs on ``mini_root`` (real MNIST digits), 500 training images in batches of 64 (8 steps an epoch), a
quarter of cnn's width, fp32. Each case is trained once whole and once cut by Ctrl-C (the ``InterruptAt`` of
tests/training/test_resume.py, here with a hook for validation too) and resumed; the final and best weights, the
weight average, metrics.csv, the history and how the run stopped must be the same, bit for bit.
"""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch

from mnistlab.callbacks import Callback
from mnistlab.config import Config, apply_overrides
from mnistlab.training import TrainingInterrupted, read_checkpoint, train

from reliability_helpers import small_overrides


def small_cfg(root, *overrides):
    return apply_overrides(Config(), small_overrides(
        root, "data.val_size=200", "train.batch_size=64", "model.width=0.25", "model.dropout=0.25",
        "train.precision=fp32", "train.epochs=3", "train.report=false", "optimizer.lr=0.003", *overrides))


class InterruptAt(Callback):
    """Sends this process SIGINT after global step ``at`` (``at`` > 0), or as epoch ``-at`` is validated."""

    def __init__(self, at):
        self.at = at

    def on_batch_end(self, step, metrics, trainer):
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)

    def on_validation_end(self, epoch, metrics, trainer):
        if -epoch == self.at:
            os.kill(os.getpid(), signal.SIGINT)


class DrawsAtBegin(InterruptAt):
    """A callback that draws random numbers as training begins (a random sample of images to show, say)."""

    def on_train_begin(self, trainer):
        torch.randint(len(trainer.validation_data()[0]), (8,))


def rows(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_run(full, cut, a, b):
    """Runs ``full`` and ``cut`` (their results, their folders ``a`` and ``b``) ended the same."""
    for name in ("last.ckpt", "best.ckpt", "ema.ckpt"):
        assert (a / name).exists() == (b / name).exists(), name
        if (a / name).exists():
            x, y = read_checkpoint(a / name), read_checkpoint(b / name)
            assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"]), name
            if x.get("ema"):
                assert x["ema"]["updates"] == y["ema"]["updates"]
                assert all(torch.equal(x["ema"]["weights"][k], y["ema"]["weights"][k]) for k in x["ema"]["weights"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(cut.fit.history) == strip(full.fit.history)
    assert rows(b) == rows(a)
    same = ("epochs", "steps", "stop_reason", "stopped_by", "best_epoch", "test_accuracy", "test_loss")
    assert {k: cut.summary.get(k) for k in same} == {k: full.summary.get(k) for k in same}


def interrupted_then_resumed(cfg, out, moments, callback=InterruptAt):
    for at in moments:
        with pytest.raises(TrainingInterrupted):
            resumed = out.exists()
            train(cfg, out=None if resumed else out, resume=out if resumed else None, quiet=True,
                  callbacks=[callback(at)])
    return train(cfg, resume=out, quiet=True, callbacks=[callback(0)])


CASES = {
    # the weight average, mixup and CutMix (one coin and one Beta draw a batch), micro-batches with batch norm
    "ema-cutmix-micro": ["ema.enabled=true", "ema.decay=0.9", "mixup.alpha=0.4", "mixup.cutmix_alpha=1.0",
                         "train.micro_batch_size=20", "model.batch_norm=true", "schedule.name=cosine",
                         "schedule.warmup_epochs=0.5", "train.label_smoothing=0.1"],
    # augmentation with the learning-rate scale of ReduceLROnPlateau on a step schedule, clipped SGD
    "augment-plateau-step": ["augment.enabled=true", "augment.elastic_alpha=3", "reduce_lr.enabled=true",
                             "reduce_lr.patience=0", "reduce_lr.threshold=0.5", "reduce_lr.cooldown=1",
                             "schedule.name=step", "schedule.gamma=0.5", "optimizer.name=sgd", "optimizer.lr=0.05",
                             "train.grad_clip=0.5"],
    # a frozen part released at epoch 2, Prechelt's UP with strips, class weights
    "finetune-up-weights": ['finetune.freeze=["features"]', "finetune.unfreeze_at=2", "optimizer.lr=0.01",
                            "schedule.name=constant", "early_stopping.criterion=up", "early_stopping.strip=1",
                            "early_stopping.strips=1", 'train.class_weights="balanced"', "train.epochs=5"],
    # train.max_steps ending epoch 2 at its 4th step, under a one-cycle schedule
    "max-steps-onecycle": ["train.max_steps=12", "schedule.name=onecycle", "ema.enabled=true"],
}


@pytest.mark.parametrize("moments", [(3, 11), (8, -2)], ids=["inside-epochs", "at-epoch-ends"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_with_features_combined_resumes_exactly(mini_root, tmp_path, case, moments):
    cfg = small_cfg(mini_root, *CASES[case])
    full = train(cfg, out=tmp_path / "full", quiet=True)
    cut = interrupted_then_resumed(cfg, tmp_path / "cut", moments)
    assert_same_run(full, cut, tmp_path / "full", tmp_path / "cut")


def test_a_callback_drawing_random_numbers_as_training_begins_does_not_shift_the_resumed_steps(mini_root, tmp_path):
    # restore() put back the checkpoint's random state before fit() ran the callbacks' on_train_begin: a callback
    # that drew there took the numbers of the first resumed steps' dropout and augmentation, which then differed
    # from the uninterrupted run's (its callback drew before its first step), and so did every weight after.
    cfg = small_cfg(mini_root, "augment.enabled=true", "schedule.name=constant")
    full = train(cfg, out=tmp_path / "full", quiet=True, callbacks=[DrawsAtBegin(0)])
    cut = interrupted_then_resumed(cfg, tmp_path / "cut", (5,), callback=DrawsAtBegin)
    assert_same_run(full, cut, tmp_path / "full", tmp_path / "cut")
