"""A run that stopped early, resumed with new values only of settings that do not change how it trains, stays
stopped (fit._NOT_TRAINING)."""

from __future__ import annotations

import logging

from mnistlab import Config, apply_overrides
from mnistlab.training import read_checkpoint, train


def test_restore_best_weights_turned_on_at_resume_keeps_a_stopped_run_stopped(mnist_root, tmp_path, caplog):
    # It counted as a new training setting: the stopped run trained one more epoch, stopped again, and then had
    # no best weights to restore (they are kept only while the switch is on), so it warned and kept that epoch's.
    cfg = apply_overrides(Config(), [f"data.dir={mnist_root}", "data.train_limit=300", "data.val_size=100",
                                     "model.name=cnn", "model.width=0.25", "train.threads=1", "train.epochs=4",
                                     "train.precision=fp32", "early_stopping.criterion=patience",
                                     "early_stopping.patience=1", "early_stopping.min_delta=100",
                                     "schedule.name=constant", "tensorboard.enabled=false"])
    run = tmp_path / "run"
    assert train(cfg, out=run, quiet=True, report=False).summary["epochs"] == 2
    before = read_checkpoint(run / "last.ckpt")["model"]
    with caplog.at_level(logging.WARNING):
        result = train(apply_overrides(cfg, ["early_stopping.restore_best_weights=true"]), resume=run, quiet=True,
                       report=False)
    assert result.summary["epochs"] == 2 and result.summary["stopped_by"] == "early_stopping"
    after = read_checkpoint(run / "last.ckpt")["model"]
    assert all(before[k].equal(after[k]) for k in before)
    assert "restore_best_weights was turned on after the best epoch (1)" in caplog.text
