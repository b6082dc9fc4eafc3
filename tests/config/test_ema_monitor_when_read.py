"""An EMA metric as a monitor needs [ema] on only where the run reads that monitor."""

from __future__ import annotations

import pytest

from mnistlab.config import Config, apply_overrides
from mnistlab.errors import ConfigError


@pytest.mark.parametrize("overrides, message", [
    (['checkpoint.monitor="ema_val_accuracy"'], "checkpoint.monitor = 'ema_val_accuracy' needs [ema] enabled"),
    (["early_stopping.criterion=patience", 'early_stopping.monitor="ema_val_loss"'],
     "early_stopping.monitor = 'ema_val_loss' needs [ema] enabled"),
    (["reduce_lr.enabled=true", 'reduce_lr.monitor="ema_val_loss"'],
     "reduce_lr.monitor = 'ema_val_loss' needs [ema] enabled"),
])
def test_a_monitor_the_run_reads_needs_the_average(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        apply_overrides(Config(), overrides)
    apply_overrides(Config(), [*overrides, "ema.enabled=true"])  # with it, the same monitor is taken


@pytest.mark.parametrize("overrides", [
    # Turning [ema] off in a config tuned with it: sections that do not read their monitor were refused
    ['early_stopping.monitor="ema_val_loss"'],  # criterion "none"
    ["early_stopping.criterion=gl", 'early_stopping.monitor="ema_val_accuracy"'],  # GL reads the loss or error
    ['reduce_lr.monitor="ema_val_loss"'],  # reduce_lr.enabled = false
])
def test_a_monitor_the_run_does_not_read_is_kept_as_it_is(overrides):
    cfg = apply_overrides(Config(), overrides)
    monitor = overrides[-1].split("=", 1)[1].strip('"')
    assert getattr(cfg, overrides[-1].split(".")[0]).monitor == monitor
