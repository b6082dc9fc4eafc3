"""Helpers the sweep tests import (a module of its own: ``conftest`` is a name every test folder shares)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

TUNE_INSTALL = "pip install -e '.[tune]'"  # the extra with what `mnistlab sweep` needs (`.[test]` has it too)


def import_optuna():
    """Optuna, for a sweep test module to call at its top (``optuna = import_optuna()``).

    Without Optuna (or filelock, the sweep's other need) the module is skipped, saying how to install them,
    except on CI (``CI=true``), where the module fails, as tests/conftest.py does for missing MNIST: a CI job
    that silently skipped the sweep tests would look green while testing nothing.
    """
    try:
        import filelock  # noqa: F401
        import optuna
    except ImportError as e:
        missing = e
    else:
        return optuna
    # outside the except block: the failure is reported alone, not chained to the ImportError
    message = f"the sweep tests need the tune extra ({missing}); install it with {TUNE_INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


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

    def __init__(self, planned_epochs: int = 1000) -> None:
        self.planned_epochs = planned_epochs  # the run's last epoch (train.epochs, or where max_steps end it)
        self.stop_reason: str | None = None
        self.stopped_by: str | None = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped_by = "early_stopping" if reason.lower().startswith("early stopping") else "callback"
