"""The callback API.

A callback overrides any of the no-op hooks of :class:`Callback`. Each hook gets
the epoch (or global step), a plain ``metrics`` dict and a :class:`TrainerHandle`
through which it may ask training to stop, change the learning rate, save a
checkpoint or read and load weights -- never the trainer's internals.

Metrics passed to ``on_epoch_end`` (floats, but epoch: an int, 1-based)::

    epoch, train_loss, train_accuracy, train_error, val_loss, val_accuracy,
    val_error, lr, seconds

and, with ``[ema]``, ``ema_val_loss`` and ``ema_val_accuracy`` (the weight average's).

Example: stop as soon as validation accuracy reaches 99%::

    class StopAt(Callback):
        def __init__(self, target):
            self.target = target

        def on_epoch_end(self, epoch, metrics, trainer):
            if metrics["val_accuracy"] >= self.target:
                trainer.request_stop(f"val_accuracy {metrics['val_accuracy']:.4f} >= {self.target}")

    fit(model, data, cfg, callbacks=[StopAt(0.99)])

Stateful callbacks implement ``state_dict`` / ``load_state_dict``. Their state
(counters, best values, never settings; plain data that ``torch.load(weights_only=True)``
reads back: numbers, strings, lists, dicts, tensors) is stored in every checkpoint, so a
resumed run makes exactly the decisions an uninterrupted one would, while the
settings given when resuming (say a new patience) win over the stored ones.
``on_train_begin`` resets the state; on resume the trainer loads the stored
state right after ``on_train_begin``. A state is found again by its class name and place among the
callbacks of its class (``user:EarlyStopping_1``); those the config makes are apart from the caller's own.

The order in which the trainer calls the hooks is in :class:`Callback`'s docstring (which ``help()`` shows).
No callback may rely on running before or after another one.

Under torchrun every process runs the callbacks, each with the same metrics (rank 0's),
so they all decide alike (rank 0's stop decision is the rule); only the process where
``trainer.is_main`` is True writes files.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from torch import nn

from ..config import EPOCH_METRICS  # the keys of the metrics dict passed to ``on_epoch_end`` (module docstring)
from ..errors import ConfigError


def checked_setting(owner: str, name: str, value: Any, *, integer: bool = False, optional: bool = False) -> Any:
    """``value`` as a finite float (an int with ``integer``), or a ConfigError naming the setting.

    The config checks its sections, but the Python API's callbacks took anything: GL(alpha=nan) never
    stopped, ReduceLROnPlateau(threshold=nan) cut the rate every epoch however the metric fell,
    EarlyStopping(patience=2.7) waited 2 epochs and min_delta="0.1" failed with abs()'s TypeError.

    >>> checked_setting("EarlyStopping", "patience", 3.0, integer=True)
    3
    """
    if value is None and optional:
        return None
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if integer:
        if real and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ConfigError(f"{owner}: {name} must be a whole number, got {value!r}")
    if real and math.isfinite(value):
        return float(value)
    raise ConfigError(f"{owner}: {name} must be a finite number{' (or None)' if optional else ''}, got {value!r}")


class TrainerHandle(Protocol):
    """What a callback may see and do. The trainer implements it."""

    @property
    def epoch(self) -> int:
        """The epochs finished so far: during epoch N (from on_epoch_begin to on_validation_end) N - 1, and N
        from its on_epoch_end on. The hooks get the epoch they are about as an argument."""

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""

    @property
    def planned_epochs(self) -> int:
        """The epoch the run ends after unless a callback stops it: ``train.epochs``, or the one in which
        ``train.max_steps`` are reached (Keras' ``params["epochs"]``, Lightning's ``max_epochs``)."""

    @property
    def run_dir(self) -> Path | None:
        """The run folder as an absolute path, or None when the run writes no files."""

    @property
    def is_main(self) -> bool:
        """True where files are written: in a one-process run, and on rank 0 of a multi-process one (torchrun).
        Every rank runs the callbacks, with rank 0's metrics, so they decide alike; on the other ranks
        ``run_dir`` is None and ``save_checkpoint`` writes nothing. A callback that writes files of its own
        (to a path given to it) writes them where this is True, as the built-in ones do."""

    @property
    def history(self) -> list[dict[str, float]]:
        """The metrics of every epoch finished so far, a resumed run's earlier epochs included (read only).
        A callback resumed without a stored state of its own (it was not on before) starts from these."""

    @property
    def model(self) -> nn.Module:
        """The model (read it; change weights only through ``set_weights``)."""

    @property
    def lr(self) -> float:
        """The learning rate of the next optimizer step, the one ``set_lr`` replaces (the epoch's
        metrics hold the rate of its last step as ``lr``; the two differ where the schedule steps)."""

    def set_lr(self, lr: float) -> None:
        """Scale the schedule so that the learning rate becomes ``lr`` from the next step on. Where the
        schedule's next rate is 0 (the end of a cosine schedule with min_lr 0) no scale does that: the call
        then changes nothing, with a warning."""

    def request_stop(self, reason: str, by: str = "callback") -> None:
        """Stop after this epoch; ``reason`` is printed and stored in summary.json, ``by`` as its
        ``stopped_by`` (a reason starting with "early stopping" counts as ``early_stopping``). The first
        request wins."""

    @property
    def stop_reason(self) -> str | None:
        """The first stop a callback has requested (one called before this one in the same ``on_epoch_end``,
        say), else None; in ``on_train_end`` the run's stop reason, whatever stopped it (Keras'
        ``model.stop_training``, Lightning's ``trainer.should_stop``)."""

    @property
    def stopped_by(self) -> str | None:
        """What ``stop_reason`` is of, summary.json's ``stopped_by``: ``request_stop``'s ``by`` ("early_stopping"
        for a reason starting with "early stopping"), and in ``on_train_end`` also max_epochs, max_steps, ..."""

    def get_weights(self) -> dict[str, torch.Tensor]:
        """A copy of the model's state_dict, on the CPU."""

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights returned by ``get_weights``."""

    def restore_weights(self, epoch: int, state: dict[str, torch.Tensor]) -> None:
        """End the run with the weights ``get_weights`` returned after ``epoch``: they are loaded and, in a
        run with a folder, written as best.ckpt, the model the run is tested with and that ``evaluate``,
        ``predict`` and ``ensemble`` read from the folder (call it from ``on_train_end``)."""

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the model as it is now atomically, as best.ckpt is written (its weights, config and history, for
        ``evaluate``, ``predict`` and ``--init-from``; no training state: a run resumes from last.ckpt);
        relative paths are under run_dir. Where ``is_main`` is False nothing is written (rank 0 writes the
        file) and the path comes back as given."""

    def validation_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation images (uint8, N x C x H x W) and labels (int64)."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the model, in eval mode, for uint8 or [0, 1] float images (other floats: a ValueError)."""


class Callback:
    """Base class with no-op hooks: override those you need. Each gets the epoch (1-based) or the global step,
    a plain ``metrics`` dict, and ``trainer`` (a :class:`TrainerHandle`: ``request_stop(reason)``, ``set_lr``,
    ``save_checkpoint``, ``model``, ``history``, ...). The order, per run::

        on_train_begin                    # then load_state_dict(stored) on resume
        for each epoch:
            on_epoch_begin
            for each batch: on_batch_begin, forward, backward, step, on_batch_end
            on_validation_end
            on_epoch_end                  # then last.ckpt is written, then the stop check
        on_train_end                      # also after an early stop or a non-finite loss

    A callback with state (counters, best values) returns it from ``state_dict`` (numbers, strings, lists, dicts,
    tensors) and takes it back in ``load_state_dict``: it is stored in every checkpoint, so a resumed run decides
    as an uninterrupted one would. See the module ``mnistlab.callbacks.base`` for an example.
    """

    def on_train_begin(self, trainer: TrainerHandle) -> None:
        """Before the first epoch (of this call: a resumed run's stored state is loaded right after it)."""

    def on_train_end(self, metrics: dict[str, Any], trainer: TrainerHandle) -> None:
        """``metrics`` holds the last epoch's metrics and ``stop_reason``."""

    def on_epoch_begin(self, epoch: int, trainer: TrainerHandle) -> None:
        """Before the epoch's first batch (``epoch``: 1-based)."""

    def on_batch_begin(self, step: int, trainer: TrainerHandle) -> None:
        """Before an optimizer step (``step``: the steps done so far in the run, from 0)."""

    def on_batch_end(self, step: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        """``metrics`` holds ``loss`` (of this batch) and ``lr``."""

    def on_validation_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        """``metrics`` holds ``val_loss``, ``val_accuracy`` and ``val_error`` (with ``[ema]`` also ``ema_val_loss``
        and ``ema_val_accuracy``)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: TrainerHandle) -> None:
        """After validation: ``metrics`` holds ``epoch``, ``train_loss``, ``train_accuracy``, ``train_error``,
        ``val_loss``, ``val_accuracy``, ``val_error``, ``lr``, ``seconds`` (and the ``[ema]`` ones); numbers a
        callback adds to it are recorded with the epoch. ``trainer.request_stop(reason)`` ends the run here."""

    def state_dict(self) -> dict[str, Any]:
        """The callback's state to store in checkpoints (plain data: see the class docstring); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back a state :meth:`state_dict` gave, on resume (after ``on_train_begin``)."""


def resolve_mode(monitor: str, mode: str) -> str:
    """``mode`` with auto resolved for ``monitor``: max for an accuracy (or an F-measure), min for the rest.

    >>> resolve_mode("val_accuracy", "auto"), resolve_mode("val_loss", "auto"), resolve_mode("val_loss", "max")
    ('max', 'min', 'max')
    """
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return mode


class MonitorMixin:
    """monitor / mode / min_delta logic shared by the callbacks that watch one metric.

    ``threshold_mode="abs"`` (Keras' ``min_delta``): in min mode a value improves
    on ``best`` when it is below ``best - min_delta``. ``"rel"`` (PyTorch's
    ``threshold_mode="rel"``): below ``best - |best| * min_delta``. NaN and
    infinite values never improve.
    """

    def _init_monitor(
        self, monitor: str, mode: str = "auto", min_delta: float = 0.0, threshold_mode: str = "abs"
    ) -> None:
        mode = resolve_mode(monitor, mode)
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be min, max or auto, got {mode!r}")
        if threshold_mode not in ("abs", "rel"):
            raise ConfigError(f"threshold_mode must be abs or rel, got {threshold_mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.threshold_mode = threshold_mode

    def _monitor_state(self) -> dict[str, str]:
        return {"monitor": self.monitor, "mode": self.mode}

    def _same_monitor(self, state: dict[str, Any]) -> bool:
        """False for a state saved while watching another metric or mode (a run resumed with a new
        ``monitor``): its best values mean nothing for this one, which starts afresh, as Lightning's
        callbacks do. States saved before the monitor was stored count as the same."""
        return state.get("monitor", self.monitor) == self.monitor and state.get("mode", self.mode) == self.mode

    def _value(self, metrics: dict[str, Any]) -> float:
        if self.monitor not in metrics:
            raise KeyError(
                f"{type(self).__name__} monitors {self.monitor!r}, which is not among the metrics: "
                f"{', '.join(sorted(metrics))}"
            )
        return float(metrics[self.monitor])

    def _is_improvement(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        delta = self.min_delta * abs(best) if self.threshold_mode == "rel" else self.min_delta
        if self.mode == "min":
            return value < best - delta
        return value > best + delta

    def _is_worse(self, value: float, reference: float) -> bool:
        """Strictly worse than ``reference`` in this mode (no min_delta)."""
        return value > reference if self.mode == "min" else value < reference


# What the trainer calls on every callback: a Callback subclass has them all (no-ops unless overridden).
CALLBACK_METHODS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_batch_begin", "on_batch_end",
                    "on_validation_end", "on_epoch_end", "state_dict", "load_state_dict")


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` as a list, or a TypeError saying what is wrong with it, before anything trains.

    Each must be an instance with every hook the trainer calls (a :class:`Callback` subclass has them all).
    Without this check a single callback not in a list, a class in place of an instance, or an object lacking
    a hook failed only inside the run (a hook's AttributeError or a missing ``trainer`` argument; a missing
    ``state_dict`` at the end of the first epoch, when the first checkpoint is written).
    """
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable) or isinstance(callbacks, (str, bytes)):
        raise TypeError(f"callbacks must be a list of callbacks, e.g. callbacks=[cb], got {type(callbacks).__name__}"
                        + (" (put it in a list)" if isinstance(callbacks, Callback) else ""))
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if isinstance(cb, type):
            raise TypeError(f"callbacks[{i}] is the class {cb.__name__}, not a callback: pass an instance, "
                            f"{cb.__name__}(...)")
        if isinstance(cb, Callback):
            continue
        missing = [m for m in CALLBACK_METHODS if not callable(getattr(cb, m, None))]
        if missing:
            raise TypeError(f"callbacks[{i}] ({type(cb).__name__}) is not a callback: it lacks {', '.join(missing)}; "
                            "subclass mnistlab.Callback, whose hooks do nothing unless overridden")
    return callbacks


# Set (True) on the callbacks ``build_callbacks`` makes from the config; their states are stored by class name.
BUILT_IN = "_mnistlab_from_config"
# An empty entry among the stored states: written with the ``user:`` keys (no class name holds a space).
USER_KEYS_MARK = "user keys"


class CallbackList:
    """Calls each hook on every callback in order, and gathers their states."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        from .checkpoint import check_apart  # here: checkpoint.py imports this module

        self.callbacks = check_callbacks(callbacks)
        check_apart(self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def _keys(self, states: dict[str, Any] | None = None) -> list[str]:
        """The key of each callback's state: the class name for those the config made (``build_callbacks``),
        ``user:`` and the class name for the caller's own, with ``_1``, ``_2``, ... for repeats of a class.

        With class names alone, a user's EarlyStopping stored under "EarlyStopping" by a run without
        ``[early_stopping]`` was loaded into the built-in one when the run was resumed with it turned on (the
        user's own then started afresh), and the built-in's state into a user's added where the config's was
        turned off. ``states`` from a checkpoint written before the prefix (no ``USER_KEYS_MARK``) gets the keys
        it was written with."""
        legacy = states is not None and USER_KEYS_MARK not in states
        seen: dict[str, int] = {}
        keys = []
        for cb in self.callbacks:
            name = type(cb).__name__
            if not legacy and not getattr(cb, BUILT_IN, False):
                name = f"user:{name}"
            keys.append(f"{name}" if name not in seen else f"{name}_{seen[name]}")
            seen[name] = seen.get(name, 0) + 1
        return keys

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Every callback's state, by key. Each must load back with ``torch.load(weights_only=True)``,
        as checkpoints are read: a state holding other objects (a datetime, a class instance) is a
        ConfigError naming the callback, at the first checkpoint, not a run whose checkpoints
        all turn out unreadable at its end."""
        from ..training.checkpoint import weights_only_refusal  # here: training imports this module

        states = {key: cb.state_dict() for key, cb in zip(self._keys(), self.callbacks)}
        for cb, state in zip(self.callbacks, states.values()):
            refusal = weights_only_refusal(state)  # small: counters, best values, a history
            if refusal is not None:
                raise ConfigError(
                    f"callback {type(cb).__name__}: its state_dict() holds objects that checkpoints cannot hold "
                    f"({refusal}); checkpoints load with weights_only=True, so keep the state to numbers, strings, "
                    "lists, dicts and tensors (float(x) for a NumPy number)"
                )
        return {**states, USER_KEYS_MARK: {}}

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        for key, cb in zip(self._keys(states), self.callbacks):
            if key in states:
                cb.load_state_dict(states[key])

    def __getattr__(self, hook: str):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)

        return call
