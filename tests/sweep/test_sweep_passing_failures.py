"""A trial that failed writing its files (a full disk) has its values tried again; one whose values cannot train
is not (its error would come again: running out of memory too, test_sweep_runner). Driven with ``fake_train``
(see conftest.py)."""

from __future__ import annotations

import errno

import pytest

from sweep_helpers import import_optuna

optuna = import_optuna()  # skipped without Optuna, but a failure under CI=true (see sweep_helpers)

from mnistlab.errors import ConfigError, RunDirError  # noqa: E402
from mnistlab.sweep import run_sweep, sweep_from_dict  # noqa: E402


def _failing_once(monkeypatch, error):
    """train() raises ``error`` the first time it is given lr 0.003."""
    import mnistlab.training.run as run

    fake, failed = run.train, []

    def train(cfg, **kw):
        if cfg.optimizer.lr == 0.003 and not failed:
            failed.append(cfg)
            raise error
        return fake(cfg, **kw)

    monkeypatch.setattr(run, "train", train)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RunDirError("cannot write to run folder sweeps/x/trial-0001: No space left")])
def test_a_point_whose_files_could_not_be_written_is_tried_again(fake_train, tmp_path, monkeypatch, error):
    _failing_once(monkeypatch, error)
    spec = sweep_from_dict({"train": {"epochs": 1}, "sweep": {"sampler": "grid",
                                                                "params": {"optimizer.lr": [0.001, 0.003]}}})
    result = run_sweep(spec, out=tmp_path, quiet=True)
    states = sorted((r.params["optimizer.lr"], r.state) for r in result.rows)
    # it was [(0.001, COMPLETE), (0.003, FAIL)]: 0.003 counted as tried, here and on every rerun
    assert states == [(0.001, "COMPLETE"), (0.003, "COMPLETE"), (0.003, "FAIL")]


def test_a_point_that_cannot_train_is_not_tried_again(fake_train, tmp_path, monkeypatch):
    _failing_once(monkeypatch, ConfigError("model cnn does not fit 28x28 images"))
    spec = sweep_from_dict({"train": {"epochs": 1}, "sweep": {"sampler": "grid",
                                                                "params": {"optimizer.lr": [0.001, 0.003]}}})
    result = run_sweep(spec, out=tmp_path, quiet=True)
    assert sorted((r.params["optimizer.lr"], r.state) for r in result.rows) == [(0.001, "COMPLETE"), (0.003, "FAIL")]
