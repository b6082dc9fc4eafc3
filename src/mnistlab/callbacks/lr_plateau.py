"""Reduce the learning rate when a metric stops improving."""

from __future__ import annotations

import logging
from typing import Any

from ..config import ReduceLROnPlateauConfig
from ..errors import ConfigError
from .base import Callback, MonitorMixin, TrainerHandle, checked_setting

log = logging.getLogger("mnistlab")


class ReduceLROnPlateau(MonitorMixin, Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs.

    * An epoch improves when the value beats the best so far by more than
      ``threshold``: relative (``threshold_mode="rel"``, PyTorch's default:
      below ``best - |best| * threshold`` in min mode, PyTorch's ``best * (1 - threshold)`` for
      the metrics here, none of which is negative) or absolute (``"abs"``, Keras'
      ``min_delta``: below ``best - threshold``).
    * Counting follows Keras (and this project's EarlyStopping): the learning
      rate is reduced at the end of the ``patience``-th epoch in a row without
      an improvement. PyTorch's scheduler waits one epoch more (``patience + 1``)
      for a patience of 1 or more; both reduce at the first such epoch for 0.
    * ``cooldown``: the ``cooldown`` epochs after a reduction are not counted
      (PyTorch's semantics; the best value still updates).
    * ``min_lr``: a reduction never takes the learning rate below it; at
      ``min_lr`` nothing more happens. A decaying schedule goes on below it
      (the scale stays), as after PyTorch's scheduler chained with ``StepLR``.

    The new rate goes through ``trainer.set_lr``, which scales the schedule, so
    a schedule keeps its shape at the lower level. Each change is logged on the
    ``mnistlab`` logger and kept in ``changes`` (and in the checkpointed state).

    >>> cb = ReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=3, cooldown=1, min_lr=1e-5)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        # NaN passed the checks below: threshold=nan made no epoch an improvement (a cut every epoch).
        factor, threshold, min_lr, eps = (checked_setting("ReduceLROnPlateau", name, value) for name, value in
                                          (("factor", factor), ("threshold", threshold), ("min_lr", min_lr),
                                           ("eps", eps)))
        patience, cooldown = (checked_setting("ReduceLROnPlateau", name, value, integer=True)
                              for name, value in (("patience", patience), ("cooldown", cooldown)))
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"factor must be in (0, 1), got {factor}")
        for name, value in (("patience", patience), ("cooldown", cooldown), ("min_lr", min_lr), ("threshold", threshold)):
            if value < 0:
                raise ConfigError(f"{name} must be 0 or more, got {value}")
        self._init_monitor(monitor, mode, threshold, threshold_mode)
        self.factor = float(factor)
        self.patience = int(patience)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.eps = float(eps)  # changes smaller than this are skipped (as in PyTorch)
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.wait = 0  # epochs in a row without improvement (outside cooldown)
        self.cooldown_left = 0
        self.changes: list[dict[str, Any]] = []  # {"epoch", "old_lr", "new_lr"} per reduction

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        value = self._value(metrics)
        if self._is_improvement(value, self.best):
            self.best = value
            self.wait = 0
        elif self.cooldown_left > 0:
            pass  # bad epochs right after a reduction do not count
        else:
            self.wait += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return
        if self.wait >= max(self.patience, 1):
            waited, self.wait = self.wait, 0
            old = float(trainer.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                trainer.set_lr(new)
                self.cooldown_left = self.cooldown
                self.changes.append({"epoch": epoch, "old_lr": old, "new_lr": new})
                log.info(
                    "epoch %d: reducing learning rate %.1e -> %.1e (%s did not improve for %d epoch%s)",
                    epoch, old, new, self.monitor, waited, "" if waited == 1 else "s",
                )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "wait": self.wait,
            "cooldown_left": self.cooldown_left,
            "changes": [dict(c) for c in self.changes],
            **self._monitor_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cooldown_left = int(state["cooldown_left"])
        self.changes = [dict(c) for c in state["changes"]]  # the rate changes made so far stand
        if self._same_monitor(state):
            self.best = state["best"]
            self.wait = int(state["wait"])

    @classmethod
    def from_config(cls, cfg: ReduceLROnPlateauConfig) -> "ReduceLROnPlateau":
        return cls(
            monitor=cfg.monitor,
            mode=cfg.mode,
            factor=cfg.factor,
            patience=cfg.patience,
            threshold=cfg.threshold,
            threshold_mode=cfg.threshold_mode,
            cooldown=cfg.cooldown,
            min_lr=cfg.min_lr,
        )


__all__ = ["ReduceLROnPlateau"]
