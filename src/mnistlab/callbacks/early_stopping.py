"""Early stopping: Keras-style patience, and Prechelt's GL, PQ and UP criteria.

:class:`EarlyStopping` watches one metric as Keras' callback does (patience,
min_delta, baseline, a start epoch), and also stops at once on a non-finite
value or one past a divergence threshold (as Lightning does).

:class:`GL`, :class:`PQ` and :class:`UP` are the three classes of stopping
criteria of L. Prechelt, "Early Stopping -- But When?" (1998). With E_va(t)
the validation error after epoch t, E_tr(t) the training error of epoch t and
E_opt(t) = min over t' <= t of E_va(t'):

* GL_alpha: generalization loss GL(t) = 100 * (E_va(t) / E_opt(t) - 1), in
  percent; stop at the first epoch with GL(t) > alpha. Checked every epoch.
* PQ_alpha: training progress over the strip of k epochs ending at t,
  P_k(t) = 1000 * (sum(E_tr over the strip) / (k * min(E_tr over the strip)) - 1);
  stop at the first strip end with GL(t) / P_k(t) > alpha.
* UP_s: stop at the first strip end t at which the validation error has grown
  over each of s successive strips: UP_1 holds at t when E_va(t) > E_va(t-k);
  UP_s holds at t when UP_{s-1} held at t-k and E_va(t) > E_va(t-k).

Strips are counted from epoch 1: they end at the epochs t with t % k == 0
(t = k, 2k, 3k, ...), so PQ is first checked at epoch k and UP_s first at
epoch (s+1)*k (it needs E_va at the strip ends t-k, ..., t-s*k).

"Error" is a parameter: ``error="loss"`` uses val_loss / train_loss,
``error="error"`` uses 1 - accuracy (val_error / train_error). E_tr is the
mean training loss (or error) measured during the epoch, as the trainer
reports it. Edge cases of the definitions: E_opt(t) = 0 gives GL = 0 when
E_va(t) = 0 and GL = inf otherwise; a strip whose minimum E_tr is 0 has
infinite progress (PQ = 0) unless the whole strip is 0, where P_k = 0 and any
GL > 0 stops.

Each stop calls ``trainer.request_stop("early stopping: <criterion and its
value> at epoch <t>")``. Every class can restore the weights of the best epoch
(lowest E_va for Prechelt's criteria, best monitored value for patience) when
training ends, whether or not it stopped training.

>>> cb = GL(alpha=5, restore_best_weights=True)        # stop when GL(t) > 5 %
>>> cb = UP(strips=3, strip=5, error="error")           # 3 rising strips of 1 - val_accuracy
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..config import EarlyStoppingConfig, and_list, unread_keys
from ..errors import ConfigError
from .base import Callback, MonitorMixin, TrainerHandle, checked_setting

# The thresholds early_stopping.alpha means when unset: within the ranges Prechelt (1998) tried, GL_1..GL_5
# and PQ_0.5..PQ_3. One shared default of 5 made `--early-stopping pq` PQ_5, where PQ() is PQ_0.5.
GL_ALPHA = 5.0
PQ_ALPHA = 0.5

log = logging.getLogger("mnistlab")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


class _StoppingRule(Callback):
    """What every stopping rule shares: start_epoch, the non-finite stop, restore_best_weights.

    State (saved in checkpoints): the best value and epoch, the best epoch's
    weights (only with restore_best_weights) and the epoch a stop was requested.
    Settings are never part of the state, so those given on resume win.
    """

    _ignores_epochs_before_start = False  # True where epochs before start_epoch give no best value

    def __init__(self, *, start_epoch: int = 1, stop_on_nonfinite: bool = True, restore_best_weights: bool = False):
        start_epoch = checked_setting(type(self).__name__, "start_epoch", start_epoch, integer=True)
        if start_epoch < 1:
            raise ConfigError(f"start_epoch must be 1 or more (epochs count from 1), got {start_epoch}")
        self.start_epoch = int(start_epoch)
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.restore_best_weights = bool(restore_best_weights)
        self._reset()

    def _reset(self) -> None:
        self.best_value: float | None = None
        self.best_epoch: int | None = None  # the epoch whose weights restore_best_weights loads
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stopped_epoch: int | None = None
        self.restored_epoch: int | None = None  # set by on_train_end when weights were restored

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        self._reset()

    def on_epoch_begin(self, epoch: int, trainer: TrainerHandle) -> None:
        # A run resumed past its stop (more epochs, another patience) trains on: the stop is no longer its end,
        # and the state in last.ckpt (which the report reads) must not keep saying so.
        if self.stopped_epoch is not None and epoch > self.stopped_epoch:
            self.stopped_epoch = None

    def _new_best(self, epoch: int, value: float, trainer: TrainerHandle) -> None:
        self.best_value, self.best_epoch = value, epoch
        if self.restore_best_weights:
            self.best_weights = trainer.get_weights()

    def _stop(self, epoch: int, reason: str, trainer: TrainerHandle) -> None:
        self.stopped_epoch = epoch
        trainer.request_stop(f"early stopping: {reason} at epoch {epoch}")

    def _stopped_on_nonfinite(self, epoch: int, name: str, value: float, trainer: TrainerHandle) -> bool:
        # Checked from epoch 1, before start_epoch: after a NaN no later epoch can be trusted.
        if self.stop_on_nonfinite and not math.isfinite(value):
            self._stop(epoch, f"{name} is {value}", trainer)
            return True
        return False

    def on_train_end(self, metrics: dict[str, Any], trainer: TrainerHandle) -> None:
        if not self.restore_best_weights:
            return
        if self.best_weights is None:
            if self.best_epoch is not None:
                why = f"restore_best_weights was turned on after the best epoch ({self.best_epoch})"
            elif self._ignores_epochs_before_start and trainer.epoch < self.start_epoch:
                # Not "no finite value": the epochs run were all before start_epoch, which it ignores.
                why = f"the run ended after epoch {trainer.epoch}, before start_epoch {self.start_epoch}"
            else:
                why = "no epoch had a finite value"
            log.warning("%s: no best weights to restore (%s); keeping the final weights", type(self).__name__, why)
            return
        trainer.restore_weights(self.best_epoch, self.best_weights)
        self.restored_epoch = self.best_epoch
        log.info("%s: restored the weights of epoch %d (%s)", type(self).__name__, self.best_epoch, self._best_text())

    def _best_text(self) -> str:
        return f"best {_fmt(self.best_value)}" if self.best_value is not None else "no best value"

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights if self.restore_best_weights else None,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.best_weights = state["best_weights"] if self.restore_best_weights else None
        self.stopped_epoch = state["stopped_epoch"]


class EarlyStopping(MonitorMixin, _StoppingRule):
    """Stop when ``monitor`` has not improved for ``patience`` epochs (Keras semantics).

    * An epoch improves when the value beats the best so far by more than
      ``min_delta`` (absolute). After ``patience`` epochs in a row without an
      improvement, training stops (``patience=0`` stops at the first one).
    * ``baseline``: the counter only restarts on an improvement that also beats
      the baseline, so a run that never beats it stops after ``patience``
      epochs (an epoch that improves on the best never stops, as in Keras).
    * ``start_epoch``: epochs before it are ignored entirely (no counting, no
      best value), as Keras' ``start_from_epoch = start_epoch - 1``.
    * ``stop_on_nonfinite``: stop at once when the value is NaN or infinite
      (otherwise such an epoch just does not improve).
    * ``divergence_threshold``: stop at once when the value is worse than this
      (e.g. val_loss above 10).
    * ``restore_best_weights``: at the end of training, whatever ended it,
      load the weights of the epoch with the best value (not with a monitor of
      the weight average, ``ema_*``: ema.ckpt holds the average's best epoch).

    >>> cb = EarlyStopping(monitor="val_loss", patience=3, min_delta=1e-3, restore_best_weights=True)
    >>> cb.mode
    'min'
    """

    _ignores_epochs_before_start = True

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 10,
        min_delta: float = 0.0,
        baseline: float | None = None,
        start_epoch: int = 1,
        stop_on_nonfinite: bool = True,
        divergence_threshold: float | None = None,
        restore_best_weights: bool = False,
    ) -> None:
        patience = checked_setting("EarlyStopping", "patience", patience, integer=True)
        min_delta = checked_setting("EarlyStopping", "min_delta", min_delta)
        # NaN would never be beaten nor crossed: the setting would be silently off (as the config refuses it).
        baseline = checked_setting("EarlyStopping", "baseline", baseline, optional=True)
        divergence_threshold = checked_setting("EarlyStopping", "divergence_threshold", divergence_threshold,
                                               optional=True)
        if patience < 0:
            raise ConfigError(f"patience must be 0 or more, got {patience}")
        if restore_best_weights and monitor.startswith("ema_"):
            # It would put the trained weights of the average's best epoch in best.ckpt, not the average whose
            # value it watched (they tested 3 points worse in one run). Keras restores what it monitored.
            raise ConfigError(
                f"early stopping's restore_best_weights loads the trained weights, not the weight average whose "
                f"{monitor} it watches; the average of its best epoch is ema.ckpt (with checkpoint.monitor = "
                f"{monitor!r}): turn restore_best_weights off, or monitor {monitor.removeprefix('ema_')}"
            )
        self._init_monitor(monitor, mode, min_delta)
        self.patience = int(patience)
        self.baseline = baseline
        self.divergence_threshold = divergence_threshold
        super().__init__(
            start_epoch=start_epoch, stop_on_nonfinite=stop_on_nonfinite, restore_best_weights=restore_best_weights
        )

    def _reset(self) -> None:
        super()._reset()
        self.wait = 0  # epochs since the counter last restarted

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        value = self._value(metrics)
        if self._stopped_on_nonfinite(epoch, self.monitor, value, trainer):
            return
        if epoch < self.start_epoch:
            return
        if self.divergence_threshold is not None and self._is_worse(value, self.divergence_threshold):
            sign = ">" if self.mode == "min" else "<"
            self._stop(epoch, f"{self.monitor}={_fmt(value)} {sign} divergence threshold {self.divergence_threshold:g}", trainer)
            return
        self.wait += 1
        if self._is_improvement(value, self.best_value):
            self._new_best(epoch, value, trainer)
            if self.baseline is None or self._is_improvement(value, self.baseline):
                self.wait = 0
            return
        # Never at epoch 1, as Keras (epoch > 0): only a value that is no improvement on nothing (a NaN,
        # with stop_on_nonfinite off) gets here then, and it says nothing yet about later epochs.
        if self.wait >= self.patience and epoch > 1:
            self._stop(epoch, self._reason(value), trainer)

    def _reason(self, value: float) -> str:
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        best = f"best {_fmt(self.best_value)} at epoch {self.best_epoch}" if self.best_epoch else "no finite value"
        if self.baseline is not None and (self.best_value is None or not self._is_improvement(self.best_value, self.baseline)):
            return (
                f"{self.monitor} did not beat the baseline {self.baseline:g} in {_epochs(self.wait)} "
                f"(patience {self.patience}; {best}; now {_fmt(value)})"
            )
        return (
            f"{self.monitor} did not improve{delta} for {_epochs(self.wait)} "
            f"(patience {self.patience}; {best}; now {_fmt(value)})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait, **self._monitor_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self._same_monitor(state):
            return
        super().load_state_dict(state)
        self.wait = int(state["wait"])


class PrecheltStopping(_StoppingRule):
    """The base of :class:`GL`, :class:`PQ` and :class:`UP` (see the module docstring).

    Records E_va(t) and E_tr(t) of every epoch (a few floats per epoch, kept in
    the state so a resumed run, even with a new strip length, decides as an
    uninterrupted one). The best epoch is the first with the lowest E_va.
    ``start_epoch``: no stop before it (values before it still count).
    Subclasses implement :meth:`check`.
    """

    criterion = "?"

    def __init__(
        self,
        *,
        error: str = "loss",
        strip: int = 5,
        start_epoch: int = 1,
        stop_on_nonfinite: bool = True,
        restore_best_weights: bool = False,
    ) -> None:
        if error not in ("loss", "error"):
            raise ConfigError(f"error must be 'loss' (val_loss/train_loss) or 'error' (1 - accuracy), got {error!r}")
        strip = checked_setting(type(self).__name__, "strip", strip, integer=True)
        if strip < 1:
            raise ConfigError(f"strip (Prechelt's k, in epochs) must be 1 or more, got {strip}")
        self.error = error
        self.strip = int(strip)
        self.val_key, self.train_key = ("val_loss", "train_loss") if error == "loss" else ("val_error", "train_error")
        super().__init__(
            start_epoch=start_epoch, stop_on_nonfinite=stop_on_nonfinite, restore_best_weights=restore_best_weights
        )

    def _reset(self) -> None:
        super()._reset()
        self.e_va: dict[int, float] = {}
        self.e_tr: dict[int, float] = {}

    @staticmethod
    def _get(metrics: dict[str, float], key: str, cls: str) -> float:
        if key not in metrics:
            raise KeyError(f"{cls} needs {key!r}, which is not among the metrics: {', '.join(sorted(metrics))}")
        return float(metrics[key])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        name = type(self).__name__
        self.e_va[epoch] = self._get(metrics, self.val_key, name)
        self.e_tr[epoch] = self._get(metrics, self.train_key, name)
        if self._stopped_on_nonfinite(epoch, self.val_key, self.e_va[epoch], trainer):
            return
        value = self.e_va[epoch]
        if math.isfinite(value) and (self.best_value is None or value < self.best_value):
            self._new_best(epoch, value, trainer)
        if epoch < self.start_epoch:
            return
        reason = self.check(epoch)
        if reason is not None:
            self._stop(epoch, reason, trainer)

    def check(self, t: int) -> str | None:
        """The reason to stop after epoch ``t``, or None."""
        raise NotImplementedError

    # -- Prechelt's quantities ------------------------------------------------

    def is_strip_end(self, t: int) -> bool:
        return t % self.strip == 0

    def e_opt(self, t: int) -> float:
        """E_opt(t): the lowest finite E_va up to epoch t (inf if none)."""
        return min((v for e, v in self.e_va.items() if e <= t and math.isfinite(v)), default=math.inf)

    def generalization_loss(self, t: int) -> float:
        """GL(t) = 100 * (E_va(t) / E_opt(t) - 1), in percent."""
        va, opt = self.e_va[t], self.e_opt(t)
        if opt == 0.0:
            return 0.0 if va == 0.0 else math.inf
        return 100.0 * (va / opt - 1.0)

    def training_progress(self, t: int) -> float | None:
        """P_k(t) = 1000 * (sum / (k * min) - 1) of E_tr over epochs t-k+1..t; None if one is missing."""
        strip = [self.e_tr.get(e) for e in range(t - self.strip + 1, t + 1)]
        if any(v is None for v in strip):
            return None
        low, total = min(strip), sum(strip)
        if low == 0.0:
            return 0.0 if total == 0.0 else math.inf
        return 1000.0 * (total / (self.strip * low) - 1.0)

    def state_dict(self) -> dict[str, Any]:
        # Lists of [epoch, value] pairs: plain types that torch.load(weights_only=True) reads back.
        return {
            **super().state_dict(),
            "e_va": [[e, v] for e, v in sorted(self.e_va.items())],
            "e_tr": [[e, v] for e, v in sorted(self.e_tr.items())],
            "error": self.error,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Values of the other error (a run resumed with another early_stopping.error) cannot be compared
        # with this one's: start afresh, as EarlyStopping does for a new monitor. Older states lack the key.
        if state.get("error", self.error) != self.error:
            return
        super().load_state_dict(state)
        self.e_va = {int(e): float(v) for e, v in state["e_va"]}
        self.e_tr = {int(e): float(v) for e, v in state["e_tr"]}


class GL(PrecheltStopping):
    """Prechelt's GL_alpha: stop at the first epoch t with GL(t) > alpha (percent).

    >>> cb = GL(alpha=5)   # stop once E_va is more than 5 % above its minimum so far
    """

    criterion = "GL"

    def __init__(self, alpha: float = GL_ALPHA, **kwargs: Any) -> None:
        alpha = checked_setting("GL", "alpha", alpha)  # NaN: GL > alpha never holds, the rule never stops
        if alpha < 0:
            raise ConfigError(f"GL alpha (percent) must be 0 or more, got {alpha}")
        self.alpha = float(alpha)
        super().__init__(**kwargs)

    def check(self, t: int) -> str | None:
        gl = self.generalization_loss(t)
        if gl > self.alpha:
            return f"GL={gl:.2f} > {self.alpha:g} ({self.val_key} {_fmt(self.e_va[t])}, best {_fmt(self.e_opt(t))})"
        return None


class PQ(PrecheltStopping):
    """Prechelt's PQ_alpha: stop at the first strip end t with GL(t) / P_k(t) > alpha.

    >>> cb = PQ(alpha=0.5, strip=5)   # checked at epochs 5, 10, 15, ...
    """

    criterion = "PQ"

    def __init__(self, alpha: float = PQ_ALPHA, strip: int = 5, **kwargs: Any) -> None:
        alpha = checked_setting("PQ", "alpha", alpha)
        if alpha < 0:
            raise ConfigError(f"PQ alpha must be 0 or more, got {alpha}")
        self.alpha = float(alpha)
        super().__init__(strip=strip, **kwargs)

    def quotient(self, t: int) -> float | None:
        """GL(t) / P_k(t), or None when the strip ending at t is incomplete."""
        progress = self.training_progress(t)
        if progress is None:
            return None
        gl = self.generalization_loss(t)
        if progress == 0.0:
            return math.inf if gl > 0 else 0.0
        return gl / progress

    def check(self, t: int) -> str | None:
        if not self.is_strip_end(t):
            return None
        pq = self.quotient(t)
        if pq is not None and pq > self.alpha:
            return (
                f"PQ=GL/P_{self.strip}={pq:.3g} > {self.alpha:g} "
                f"(GL={self.generalization_loss(t):.2f}, P_{self.strip}={self.training_progress(t):.3g})"
            )
        return None


class UP(PrecheltStopping):
    """Prechelt's UP_s: stop at a strip end t when E_va rose over each of ``strips`` successive strips.

    >>> cb = UP(strips=3, strip=5)   # first possible stop at epoch 20
    """

    criterion = "UP"

    def __init__(self, strips: int = 3, strip: int = 5, **kwargs: Any) -> None:
        strips = checked_setting("UP", "strips", strips, integer=True)
        if strips < 1:
            raise ConfigError(f"UP strips (Prechelt's s) must be 1 or more, got {strips}")
        self.strips = int(strips)
        super().__init__(strip=strip, **kwargs)

    def holds(self, t: int, s: int) -> bool:
        """UP_s at t: UP_{s-1} held at t-k and E_va(t) > E_va(t-k) (UP_0 always holds)."""
        if s == 0:
            return True
        k = self.strip
        if not self.is_strip_end(t) or t - k not in self.e_va or t not in self.e_va:
            return False
        return self.e_va[t] > self.e_va[t - k] and self.holds(t - k, s - 1)

    def check(self, t: int) -> str | None:
        if self.holds(t, self.strips):
            ends = range(t - self.strips * self.strip, t + 1, self.strip)
            values = ", ".join(f"{_fmt(self.e_va[e])}@{e}" for e in ends)
            return f"UP_{self.strips}: {self.val_key} rose over {self.strips} successive {self.strip}-epoch strips ({values})"
        return None


def early_stopping_from_config(cfg: EarlyStoppingConfig) -> Callback | None:
    """The stopping rule the ``[early_stopping]`` section asks for (None for criterion "none")."""
    if not isinstance(cfg, EarlyStoppingConfig):  # the whole Config: "object has no attribute 'start_epoch'"
        raise TypeError(f"early_stopping_from_config() takes the [early_stopping] section (cfg.early_stopping), got "
                        f"{type(cfg).__name__}")
    common = dict(
        start_epoch=cfg.start_epoch,
        stop_on_nonfinite=cfg.stop_on_nonfinite,
        restore_best_weights=cfg.restore_best_weights,
    )
    if cfg.criterion == "none":
        return None
    if cfg.criterion == "patience":
        return EarlyStopping(
            monitor=cfg.monitor,
            mode=cfg.mode,
            patience=cfg.patience,
            min_delta=cfg.min_delta,
            baseline=cfg.baseline,
            divergence_threshold=cfg.divergence_threshold,
            **common,
        )
    if cfg.criterion == "gl":
        return GL(alpha=alpha_of(cfg), error=cfg.error, **common)
    if cfg.criterion == "pq":
        return PQ(alpha=alpha_of(cfg), strip=cfg.strip, error=cfg.error, **common)
    if cfg.criterion == "up":
        return UP(strips=cfg.strips, strip=cfg.strip, error=cfg.error, **common)
    raise ConfigError(f"early_stopping.criterion = {cfg.criterion!r} is not valid; choose one of: none, patience, gl, pq, up")


def alpha_of(cfg: EarlyStoppingConfig) -> float:
    """``early_stopping.alpha``, or where it is unset the criterion's own default (GL 5, PQ 0.5).

    >>> alpha_of(EarlyStoppingConfig(criterion="pq")), alpha_of(EarlyStoppingConfig(criterion="gl", alpha=2.0))
    (0.5, 2.0)
    """
    if cfg.alpha is not None:
        return cfg.alpha
    return PQ_ALPHA if cfg.criterion == "pq" else GL_ALPHA


# The settings each kind of rule reads besides start_epoch, stop_on_nonfinite and restore_best_weights.
_PATIENCE_KEYS = ("monitor", "mode", "patience", "min_delta", "baseline", "divergence_threshold")
_PRECHELT_KEYS = {"gl": ("alpha", "error"), "pq": ("alpha", "strip", "error"), "up": ("strips", "strip", "error")}


def early_stopping_warnings(cfg: EarlyStoppingConfig, epochs: int) -> list[str]:
    """What in ``[early_stopping]`` will not act in a run of ``epochs`` epochs: settings the criterion does
    not read (left from another criterion, or set for the wrong one), and a rule that cannot stop so early.

    Warnings, not errors: a resumed run keeps its stored settings when it changes criterion, and a run
    may be resumed with more epochs.

    >>> early_stopping_warnings(EarlyStoppingConfig(criterion="up", strips=3), epochs=12)
    ['UP_3 cannot stop a run of 12 epochs: it compares E_va at the ends of 5-epoch strips, so its first possible stop is after epoch 20']
    """
    if cfg.criterion == "none":
        return []
    keys_of = {"patience": _PATIENCE_KEYS, **_PRECHELT_KEYS}
    out = [f"early_stopping.{key} = {getattr(cfg, key)!r} is not used by criterion {cfg.criterion!r} "
           f"(it is read by {'criterion' if len(readers) == 1 else 'criteria'} {and_list(readers)} only)"
           for key, readers in unread_keys(cfg, cfg.criterion, keys_of,
                                           order=(*_PATIENCE_KEYS, "alpha", "strip", "strips", "error"))]
    k, start = cfg.strip, cfg.start_epoch
    if cfg.criterion == "patience":
        # The first decided epoch sets the best value and never stops; then ``patience`` epochs without an
        # improvement (with a baseline not beaten, the first epoch already counts as one of them).
        wait = max(cfg.patience - 1, 1) if cfg.baseline is not None else max(cfg.patience, 1)
        first, name, how = start + wait, f"early stopping with patience {cfg.patience}", ""
    elif cfg.criterion == "gl":
        first, name, how = max(2, start), f"GL_{alpha_of(cfg):g}", ""
    elif cfg.criterion == "pq":
        first = k * -(-max(k, start) // k)
        name, how = f"PQ_{alpha_of(cfg):g}", f": it decides at the ends of {k}-epoch strips"
    else:
        first = k * -(-max((cfg.strips + 1) * k, start) // k)
        name, how = f"UP_{cfg.strips}", f": it compares E_va at the ends of {k}-epoch strips"
    if first > epochs:
        out.append(f"{name} cannot stop a run of {_epochs(epochs)}{how}, so its first possible stop is after "
                   f"epoch {first}")
    if cfg.criterion == "pq" and k == 1:
        # P_1(t) = 1000 * (E_tr(t) / E_tr(t) - 1) = 0, so GL / P_k is infinite at any GL above 0
        out.append(f"{name} with early_stopping.strip = 1 stops at the first epoch whose validation error is above "
                   "its best (GL > 0): the training progress over a 1-epoch strip is always 0; Prechelt's strip "
                   "is 5")
    return out


_SPEC_FORMS = "none, patience:N (epochs), gl:ALPHA (percent), pq:ALPHA, up:S (strips)"


def parse_early_stopping(spec: str) -> dict[str, Any]:
    """``--early-stopping`` as config overrides for :func:`~mnistlab.config.apply_overrides`.

    The number may be left out to keep the configured one; the strip length k
    and everything else are set with ``--set early_stopping.KEY=VALUE``.

    >>> parse_early_stopping("gl:5")
    {'early_stopping.criterion': 'gl', 'early_stopping.alpha': 5.0}
    >>> parse_early_stopping("up:3")
    {'early_stopping.criterion': 'up', 'early_stopping.strips': 3}
    """
    name, sep, number = spec.strip().lower().partition(":")
    keys = {"gl": ("alpha", float), "pq": ("alpha", float), "up": ("strips", int), "patience": ("patience", int)}
    if name == "none" and not sep:
        return {"early_stopping.criterion": "none"}
    if name not in keys or (sep and not number):
        raise ConfigError(f"--early-stopping {spec!r} is not valid; use one of: {_SPEC_FORMS}")
    out: dict[str, Any] = {"early_stopping.criterion": name}
    if sep:
        key, kind = keys[name]
        try:
            value = kind(number)
        except ValueError:
            raise ConfigError(
                f"--early-stopping {spec!r}: {number!r} is not {'an integer' if kind is int else 'a number'}; "
                f"use one of: {_SPEC_FORMS}"
            ) from None
        if not math.isfinite(value) or value < 0 or (name == "up" and value < 1):
            raise ConfigError(
                f"--early-stopping {spec!r}: the {key} must be {'1 or more' if name == 'up' else '0 or more'}; "
                f"use one of: {_SPEC_FORMS}"
            )
        out[f"early_stopping.{key}"] = value
    return out


__all__ = [
    "EarlyStopping",
    "PrecheltStopping",
    "GL",
    "PQ",
    "UP",
    "early_stopping_from_config",
    "early_stopping_warnings",
    "parse_early_stopping",
]
