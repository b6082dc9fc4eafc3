"""Training: the fit loop, evaluation, checkpoint I/O and whole runs."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..callbacks import build_callbacks
from ..callbacks.base import Callback, check_callbacks
from ..config import Config
from ..data import DataBundle
from ..errors import CheckpointError, ConfigError, RunDirError
from . import distributed
from .checkpoint import load_model, load_weights, read_checkpoint, save_checkpoint
from .evaluate import Evaluation, evaluate, predict_logits
from .fit import FitResult, Trainer, TrainingInterrupted
from .run import RunLock, RunResult, check_config_type, config_model, settings_warnings, train


def fit(
    model,
    data,
    cfg: Config | None = None,
    *,
    callbacks: Iterable[Callback] = (),
    run_dir: str | Path | None = None,
) -> FitResult:
    """Train ``model`` on a :class:`~mnistlab.data.DataBundle` in this process.

    The config's rules that steer training act as they do in ``train``: the
    ``[early_stopping]`` rule, ``[reduce_lr]`` and ``train.max_minutes``, called
    before the ``callbacks`` given, and ``train.max_steps``. The callbacks that keep files (History,
    ModelCheckpoint, TensorBoard) are ``train``'s alone. With ``run_dir`` the
    trainer writes last.ckpt there (ema.ckpt with ``[ema]``, and best.ckpt where
    ``restore_best_weights`` restores; callbacks may write more), holding its run.lock as ``train`` does;
    without it nothing touches the disk.
    A checkpoint rebuilds its model from ``cfg``'s ``[model]`` section, so with
    ``run_dir`` the model must be the one ``cfg`` describes: that is checked
    before any training.
    """
    cfg = Config() if cfg is None else cfg
    check_config_type(cfg, "fit")
    callbacks = check_callbacks(callbacks)
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit(): the model must be a torch.nn.Module (build_model(name, ...) builds one), got "
                        f"{type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError(f"fit(): the data must be a DataBundle, from load_data(cfg.data), got {type(data).__name__}")
    if distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        # Each process would train alone on all the data, and all of them would write run_dir.
        raise ConfigError(f"fit() trains in this process alone, and torchrun started {os.environ['WORLD_SIZE']}: "
                          "call train(cfg, callbacks=[...]) in the script, which joins the other processes (each "
                          "takes its share of every batch) and writes the run folder from rank 0")
    if run_dir is not None:
        _check_config_describes(model, data, cfg)
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    for warning in settings_warnings(cfg):
        warnings.warn(warning, stacklevel=2)
    steering = build_callbacks(cfg, None)  # without a folder: only those that steer the training
    with _threads(cfg.train.threads):
        trainer = Trainer(model, data, cfg, callbacks=[*steering, *callbacks], run_dir=run_dir)
        if run_dir is None:
            return trainer.fit()
        # As train() does: a second run into the folder (fit or train, here or in another process) would mix its
        # last.ckpt and best.ckpt with this one's.
        with RunLock(Path(run_dir)):
            return trainer.fit()


@contextlib.contextmanager
def _threads(threads: int | None):
    """``train.threads`` for the length of a fit() call (unset: the process's count), then the caller's count,
    as ``train`` does."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _check_config_describes(model, data, cfg: Config) -> None:
    """Raise ConfigError unless ``cfg``'s model has ``model``'s tensors (names, shapes, crop) and, with its
    weights, computes what ``model`` does on a few training images: some options change no shape (lenet5's
    padding of 2 or 3 pixels gives the same tensors), and a checkpoint would rebuild another network."""
    with torch.random.fork_rng(devices=[]):  # its initial weights must not move the caller's dropout draws
        described = config_model(cfg, data)
    advice = ("describe the model in the config, e.g. apply_overrides(cfg, ['model.name=...']), and build it with "
              "build_model(cfg.model.name, **cfg.model.options(), ...)")
    try:
        load_weights(described, model.state_dict(), source="the model given", check_values=False)
    except CheckpointError as e:
        raise ConfigError(
            f"fit(run_dir=...): the config describes another model than the one given (model.name = "
            f"{cfg.model.name!r}, {e}); its checkpoints could not be loaded: {advice}"
        ) from None
    probe = data.train.images[:4]
    if len(probe):
        expected = predict_logits(described, probe)
        got = predict_logits(model, probe).to(expected.device)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-3):
            raise ConfigError(
                f"fit(run_dir=...): the config describes another model than the one given (model.name = "
                f"{cfg.model.name!r}): the same tensors, but other outputs on the same images (an option such as "
                f"padding differs), so its checkpoints would rebuild another network: {advice}"
            )


__all__ = [
    "Evaluation",
    "FitResult",
    "RunResult",
    "Trainer",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]
