"""Fixtures for the sweep tests: a tiny real-MNIST base config, and a stand-in for ``train``.

Most tests exercise the study machinery (sampling, counting, pruning, continuing),
which does not depend on what a trial learns: they replace ``train`` with
``fake_train``, whose validation accuracy is a known function of the learning
rate, so a test can say which trial must win or be pruned. A few tests run real
trainings on ``sweep_helpers.tiny_base`` (1,000 real MNIST training images, a 4/8-kernel CNN).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sweep_helpers import FakeHandle, fake_accuracy


@pytest.fixture
def fake_train(monkeypatch) -> list:
    """Replace ``mnistlab.training.run.train`` by a run without training; returns the configs it was called with.

    Like the real one it creates the run folder and calls the config's early-stopping rule
    and the given callbacks after each epoch, stopping when one asks.
    """
    from mnistlab.callbacks import early_stopping_from_config
    from mnistlab.training.fit import FitResult
    from mnistlab.training.run import RunResult

    calls = []

    def train(cfg, *, out, callbacks=(), quiet=False, resume=None):
        Path(out).mkdir(parents=True)  # a second trial in the same folder would fail here, as the real one refuses
        calls.append(cfg)
        handle = FakeHandle(planned_epochs=cfg.train.epochs)
        stopper = early_stopping_from_config(cfg.early_stopping)
        cbs = ([stopper] if stopper else []) + list(callbacks)
        for cb in cbs:
            cb.on_train_begin(handle)
        history = []
        # lr >= 1 diverges as the real trainer reports it: a non-finite loss in epoch 1, no epoch in the history.
        for epoch in range(1, cfg.train.epochs + 1 if cfg.optimizer.lr < 1.0 else 1):
            acc = fake_accuracy(cfg, epoch)
            m = {"epoch": epoch, "train_loss": 1 - acc, "train_accuracy": acc, "train_error": 1 - acc,
                 "val_loss": 1 - acc, "val_accuracy": acc, "val_error": 1 - acc, "lr": cfg.optimizer.lr, "seconds": 0.0}
            history.append(m)
            for cb in cbs:
                cb.on_epoch_end(epoch, m, handle)
            if handle.stop_reason is not None:
                break
        reason = handle.stop_reason or (f"max epochs reached ({cfg.train.epochs})" if history else "non-finite loss")
        stopped_by = handle.stopped_by or ("max_epochs" if history else "non_finite_loss")
        handle.stop_reason, handle.stopped_by = reason, stopped_by  # in on_train_end the run's reason, as the trainer's
        for cb in cbs:
            cb.on_train_end({**(history[-1] if history else {}), "stop_reason": reason}, handle)
        fit = FitResult(model=None, history=history, stop_reason=reason, stopped_by=stopped_by,
                        epochs=len(history), steps=0, train_seconds=0.0)
        return RunResult(run_dir=Path(out), fit=fit, test=None, summary={"stop_reason": reason})

    monkeypatch.setattr("mnistlab.training.run.train", train)
    return calls

