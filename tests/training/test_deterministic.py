"""train.deterministic: deterministic algorithms only, for the run, put back after it.

CPU runs repeat bit for bit either way (test_determinism.py); what the setting changes shows on a GPU
(tests/gpu). Here: that it is on for the whole run (the epochs and the final test), off again after it, and
that an op without a deterministic version stops the run with a config error naming it.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from mnistlab.callbacks import Callback
from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError
from mnistlab.training import train

run_module = sys.modules["mnistlab.training.run"]


def flags() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


ON = (True, True, False, False, False, ":4096:8")


class Record(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, step, metrics, trainer):
        self.seen.append(flags())


def tiny(root, *overrides):
    return apply_overrides(Config(), [f"data.dir={root}", "data.train_limit=200", "data.val_size=100",
                                      "model.name=cnn", "model.channels=[4, 8]", "train.epochs=1",
                                      "train.batch_size=50", "tensorboard.enabled=false", *overrides])


@pytest.fixture
def tested(monkeypatch):
    """The flags in force while the run's final test evaluates."""
    seen, evaluate = [], run_module.evaluate

    def recording(*args, **kwargs):
        seen.append(flags())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", recording)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    return seen


def test_deterministic_algorithms_for_the_whole_run_and_not_after(mnist_root, tmp_path, tested):
    before, look = flags(), Record()
    assert before[0] is False and before[-1] is None
    result = train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "run", quiet=True, callbacks=[look])
    assert set(look.seen) == {ON}  # every step
    assert tested == [ON]
    assert flags() == before
    assert result.summary["test_accuracy"] > 0


def test_off_by_default_and_a_users_cublas_setting_is_kept(mnist_root, tmp_path, tested, monkeypatch):
    look = Record()
    train(tiny(mnist_root), out=tmp_path / "off", quiet=True, callbacks=[look])
    assert set(look.seen) == {flags()} and not look.seen[0][0]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice, also deterministic
    look = Record()
    train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "on", quiet=True, callbacks=[look])
    assert set(look.seen) == {ON[:-1] + (":16:8",)}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


class NonDeterministicOp(Callback):
    def on_batch_begin(self, step, trainer):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))  # put_ without accumulate: no such version


def test_an_op_without_a_deterministic_version_is_a_config_error_that_names_it(mnist_root, tmp_path):
    with pytest.raises(ConfigError) as err:
        train(tiny(mnist_root, "train.deterministic=true"), out=tmp_path / "run", quiet=True,
              callbacks=[NonDeterministicOp()])
    message = str(err.value)
    assert message.startswith("train.deterministic = true: put_ does not have a deterministic implementation")
    assert message.endswith("set train.deterministic = false to train with it")
    assert not torch.are_deterministic_algorithms_enabled()
    # without the setting the same op is just an op
    train(tiny(mnist_root), out=tmp_path / "plain", quiet=True, callbacks=[NonDeterministicOp()])
