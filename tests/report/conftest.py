"""One short real run that stops early, shared (read-only) by the report tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def finished_run(mnist_root, tmp_path_factory):
    """A run folder written by ``train()``: 2,000 real MNIST images, stopped early after epoch 2 of 3.

    Early stopping watches ``epoch`` in min mode, which never improves after epoch 1:
    with patience 1 it stops after epoch 2, deterministically, and restores epoch 1.
    Returns ``(run_dir, RunResult)``. Tests that change files must work on a copy
    (see ``copy_run``).
    """
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training.run import train

    cfg = apply_overrides(Config(), {
        "data.dir": str(mnist_root), "data.download": False, "data.train_limit": 2000, "data.val_size": 500,
        "train.epochs": 3, "train.threads": 1, "train.progress": False, "tensorboard.enabled": False,
        "early_stopping.criterion": "patience", "early_stopping.monitor": "epoch", "early_stopping.mode": "min",
        "early_stopping.patience": 1, "early_stopping.restore_best_weights": True,
    })
    out = tmp_path_factory.mktemp("finished") / "run"
    result = train(cfg, out=out, quiet=True)
    return out, result


@pytest.fixture
def copy_run(finished_run, tmp_path):
    """A fresh copy of the finished run folder, to change or delete files in."""

    def make(name: str = "run") -> Path:
        target = tmp_path / name
        shutil.copytree(finished_run[0], target)
        return target

    return make
