"""Helpers the sweep tests import (a module of its own: ``conftest`` is a name every test folder shares)."""

from __future__ import annotations

import math
from pathlib import Path


def tiny_base(root: Path, epochs: int = 2) -> str:
    """The TOML of a config training in about a second on real MNIST (the base of real sweeps)."""
    return f"""
[model]
name = "cnn"
channels = [4, 8]

[data]
dir = "{root}"
train_limit = 1000
val_size = 500
download = false

[optimizer]
name = "adam"
lr = 0.003

[schedule]
name = "constant"

[train]
epochs = {epochs}
batch_size = 100
threads = 1

[tensorboard]
enabled = false
"""


def fake_accuracy(cfg, epoch: int) -> float:
    """The fake run's val_accuracy after ``epoch``: rises linearly to its peak, highest at lr = 0.01."""
    peak = 0.9 / (1.0 + abs(math.log10(cfg.optimizer.lr / 0.01)))
    return peak * epoch / cfg.train.epochs


class FakeHandle:
    """The part of the trainer handle the stopping rules use, with Trainer.request_stop's rule for stopped_by."""

    def __init__(self) -> None:
        self.stop_reason: str | None = None
        self.stopped_by: str | None = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped_by = "early_stopping" if reason.lower().startswith("early stopping") else "callback"
