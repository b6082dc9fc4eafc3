"""Callbacks: the API (base.py) and one file per callback.

As in Keras' ``fit(callbacks=[...])``::

    from mnistlab.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, GL

    fit(model, data, cfg, callbacks=[GL(alpha=5, restore_best_weights=True),
                                     ReduceLROnPlateau(patience=2)])

A run (``mnistlab train``) builds its callbacks from the config with
:func:`build_callbacks`; callbacks passed by the user are added to those.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config, config_to_dict
from .base import BUILT_IN, EPOCH_METRICS, Callback, CallbackList, MonitorMixin, TrainerHandle
from .checkpoint import ModelCheckpoint
from .early_stopping import (
    GL,
    PQ,
    UP,
    EarlyStopping,
    PrecheltStopping,
    early_stopping_from_config,
    parse_early_stopping,
)
from .history import History
from .lr_plateau import ReduceLROnPlateau
from .tensorboard import TensorBoard
from .time_limit import TimeLimit


def flat_config(cfg: Config) -> dict[str, object]:
    """``{"section.key": value}`` for every key of the config (the hyperparameters of a run)."""
    _check_config(cfg, "flat_config")
    return {f"{s}.{k}": v for s, keys in config_to_dict(cfg).items() for k, v in keys.items()}


def build_callbacks(cfg: Config, run_dir: str | Path | None) -> list[Callback]:
    """The callbacks a run's config asks for.

    With a run folder: History (metrics.csv, always), ModelCheckpoint (best.ckpt
    and the ``[checkpoint]`` files) and, if ``tensorboard.enabled``,
    TensorBoard. Always: the ``[early_stopping]`` rule unless its criterion is
    "none", ReduceLROnPlateau if ``reduce_lr.enabled``, and TimeLimit if
    ``train.max_minutes`` is set. The callbacks write
    under ``trainer.run_dir``, which must be ``run_dir``.

    >>> [type(cb).__name__ for cb in build_callbacks(Config(), None)]
    []
    """
    _check_config(cfg, "build_callbacks")
    callbacks: list[Callback] = []
    if run_dir is not None:
        callbacks.append(History())
        callbacks.append(ModelCheckpoint.from_config(cfg.checkpoint))
    stopper = early_stopping_from_config(cfg.early_stopping)
    if stopper is not None:
        callbacks.append(stopper)
    if cfg.reduce_lr.enabled:
        callbacks.append(ReduceLROnPlateau.from_config(cfg.reduce_lr))
    if cfg.train.max_minutes is not None:
        callbacks.append(TimeLimit(cfg.train.max_minutes, schedule=cfg.schedule.name))
    if run_dir is not None and cfg.tensorboard.enabled:
        callbacks.append(TensorBoard.from_config(cfg.tensorboard, hparams=flat_config(cfg)))
    for cb in callbacks:  # their states keep class-name keys in checkpoints; the caller's own get "user:" keys
        setattr(cb, BUILT_IN, True)
    return callbacks


def _check_config(cfg: object, caller: str) -> None:
    # A section (cfg.train, cfg.early_stopping) in place of the whole config failed inside, with
    # "AttributeError: 'TrainConfig' object has no attribute 'early_stopping'" or dataclasses' "must be called with
    # a dataclass type or instance"; early_stopping_from_config is the one that takes a section.
    if not isinstance(cfg, Config):
        raise TypeError(f"{caller}() takes the whole mnistlab.Config (Config(), load_config(path)), got "
                        f"{type(cfg).__name__}")


__all__ = [
    "Callback",
    "CallbackList",
    "EPOCH_METRICS",
    "EarlyStopping",
    "GL",
    "History",
    "ModelCheckpoint",
    "MonitorMixin",
    "PQ",
    "PrecheltStopping",
    "ReduceLROnPlateau",
    "TensorBoard",
    "TimeLimit",
    "TrainerHandle",
    "UP",
    "build_callbacks",
    "early_stopping_from_config",
    "flat_config",
    "parse_early_stopping",
]
