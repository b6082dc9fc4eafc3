"""Stop before the training time would pass a limit (``train.max_minutes``; Lightning's ``max_time``).

The time counted is the training steps' (``seconds`` of each epoch's metrics, what
summary.json's ``train_seconds`` adds up), not validation, checkpoints or the final
test. An epoch is never cut: after each one, training stops if the next one could
end past the limit, judged by the longest epoch so far. So the first epoch always
runs, and a run stays within the limit unless an epoch takes longer than all before
it. The schedule is still planned over ``train.epochs``: to end a one-cycle or
cosine schedule on time, give epochs that fit (a limit alone cuts it short, as
early stopping does). Given the run's ``schedule``, it warns after the first
epoch when such a schedule will not end in time, and says how many epochs would
fit.

Which epoch a limit stops at depends on the machine's speed, so runs with a limit
repeat exactly only where the same epochs fit. The time used so far is kept in
checkpoints: a resumed run goes on counting, and resuming with a larger limit
trains on. A run that had no limit and is resumed with one counts its earlier
epochs' seconds too. An epoch after which the run ends anyway (its last, by
``epochs`` or ``max_steps``: the trainer's ``planned_epochs``) is never called a
stop by the limit.

>>> cb = TimeLimit(20)                 # minutes
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..errors import ConfigError
from .base import Callback, TrainerHandle

log = logging.getLogger("mnistlab")
# Schedules whose rate is only low near their planned end: cut short, they leave the net at a high rate.
_DECAYING = ("onecycle", "cosine")


def _duration(seconds: float) -> str:
    """
    >>> _duration(42.0), _duration(126.0), _duration(0.043)
    ('42.0 s', '2.1 min', '0.043 s')
    """
    if seconds < 1:  # a tiny run's epoch: "0.0 s" would read as no time at all
        return f"{seconds:.2g} s"
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


class TimeLimit(Callback):
    """Stop after the epoch whose successor could take the training time past ``max_minutes`` (see the module
    docstring); ``schedule``, the run's schedule name, makes it warn when a one-cycle or cosine schedule will
    be cut short."""

    def __init__(self, max_minutes: float, *, schedule: str | None = None) -> None:
        if not (isinstance(max_minutes, (int, float)) and math.isfinite(max_minutes) and max_minutes > 0):
            raise ConfigError(f"TimeLimit: max_minutes must be a positive number, got {max_minutes!r}")
        self.max_minutes = float(max_minutes)
        self.schedule = schedule  # the run's schedule.name: whether being cut short leaves its rate high
        self._reset()

    def _reset(self) -> None:
        self.used = 0.0  # seconds of training so far
        self.longest = 0.0  # the longest epoch so far, in seconds

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        # The epochs already trained count: a run resumed with a limit it did not have before has no stored
        # state to load after this (it counted from 0, and trained past the limit by its earlier time).
        self._reset()
        past = [float(row.get("seconds", 0.0)) for row in trainer.history]
        self.used, self.longest = sum(past), max(past, default=0.0)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        self.used += metrics["seconds"]
        self.longest = max(self.longest, metrics["seconds"])
        # The run ends after this epoch anyway (its last epoch, or train.max_steps reached): the limit stops nothing.
        planned = trainer.planned_epochs
        last = epoch >= planned
        if epoch == 1 and not last and self.schedule in _DECAYING and self.longest > 0:
            # The epochs that will run: the first always does, then each while the next fits. Compared as
            # fits < planned, a run of one epoch longer than the limit was told "1 of the 1 epochs" fit.
            fits = 60 * self.max_minutes / self.longest  # not //: inf // x is NaN (a limit of 1e308 minutes)
            fit = max(1, int(min(fits, planned)))
            if fit < planned:
                log.warning(
                    "time limit: at %s an epoch, about %d of the %d epochs fit in %g min, but the %s schedule is "
                    "planned over all %d: training will stop while its rate is still high (--epochs %d would end "
                    "it in time)", _duration(self.longest), fit, planned, self.max_minutes, self.schedule,
                    planned, fit,
                )
        if not last and self.used + self.longest > 60 * self.max_minutes:
            trainer.request_stop(
                f"time limit of {self.max_minutes:g} min: {_duration(self.used)} of training used after epoch {epoch}, "
                f"and an epoch takes up to {_duration(self.longest)}",
                by="time_limit",
            )

    def state_dict(self) -> dict[str, Any]:
        return {"used": self.used, "longest": self.longest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used, self.longest = float(state["used"]), float(state["longest"])
