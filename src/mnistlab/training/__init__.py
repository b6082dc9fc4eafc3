"""Training: the fit loop, evaluation, checkpoint I/O and whole runs."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..callbacks import ModelCheckpoint, build_callbacks
from ..callbacks.base import Callback, check_callbacks
from ..config import Config
from ..data import DataBundle
from ..errors import CheckpointError, ConfigError, RunDirError
from ..folders import expand_home, missing_folders, remove_empty
from . import distributed
from .allocator import kept_warning
from .checkpoint import load_model, load_weights, read_checkpoint, save_checkpoint
from .evaluate import Evaluation, evaluate, predict_logits
from .fit import FitResult, Trainer, TrainingInterrupted
from .finetune import read_init_checkpoint
from .run import (RunLock, RunResult, check_config_type, check_folder_given, config_model, load_init, prepare_run_dir,
                  settings_warnings, train)
from .schedules import max_steps_warnings


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
    ``finetune.init_from`` is loaded into ``model`` first, as ``train`` loads it
    (on each call), and ``finetune.freeze`` applies.
    A checkpoint rebuilds its model from ``cfg``'s ``[model]`` section, so where
    checkpoints may be written (``run_dir``, or a ``ModelCheckpoint`` among the
    callbacks) the model must be the one ``cfg`` describes: that is checked
    before any training, and a callback's ``save_checkpoint`` of another model
    is refused. A ``run_dir`` that holds a run is refused, as ``train`` refuses
    one: continue that run with ``train(cfg, resume=run_dir)``. ``finetune.freeze`` holds for the call: the
    parameters it froze are trainable again after it. A call refused before training leaves the model as it was
    (weights, device, layout). The model comes back in eval mode, also where a Ctrl-C (a notebook's "interrupt
    kernel") stopped it after a step with :class:`TrainingInterrupted`, the model then keeping the weights
    trained so far. It stays in the layout it
    trained in: channels-last where ``train.channels_last`` chose it (as ``load_model`` gives these models, the
    faster layout for them), whose conv weights take ``.reshape``, not ``.view``.
    """
    cfg = Config() if cfg is None else cfg
    check_config_type(cfg, "fit")
    callbacks = check_callbacks(callbacks)
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit(): the model must be a torch.nn.Module (build_model(name, ...) builds one), got "
                        f"{type(model).__name__}")
    if not isinstance(data, DataBundle):
        raise TypeError(f"fit(): the data must be a DataBundle, from load_data(cfg.data), got {type(data).__name__}")
    check_folder_given(run_dir, "fit", "run_dir", "leave it out to train without writing files")
    if run_dir is not None:  # "~/runs/a" was a folder named ~ in the current one
        run_dir = expand_home(Path(run_dir), "run_dir", RunDirError)
    if distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        # Each process would train alone on all the data, and all of them would write run_dir.
        raise ConfigError(f"fit() trains in this process alone, and torchrun started {os.environ['WORLD_SIZE']}: "
                          "call train(cfg, callbacks=[...]) in the script, which joins the other processes (each "
                          "takes its share of every batch) and writes the run folder from rank 0")
    # Everything that may refuse the call comes before the model's weights change: a refused call leaves the
    # caller's model as it was (the init checkpoint is only read here, and loaded last).
    init = None if cfg.finetune.init_from is None else read_init_checkpoint(cfg.finetune.init_from)
    # a checkpoint rebuilds its model from cfg: one of another model would load as the wrong network, or not at all
    writes = run_dir is not None or any(isinstance(cb, ModelCheckpoint) for cb in callbacks)
    if writes:
        _check_config_describes(model, data, cfg)
    if run_dir is not None:
        made = missing_folders(Path(run_dir))
        prepare_run_dir(Path(run_dir), resume=False, other="pass another run_dir")
    callers = _CallersModel(model, keep_values=init is not None)
    if init is not None:  # as train() starts from it (the head replaced for other classes)
        try:
            logging.getLogger("mnistlab").info(load_init(model, cfg, data, init))
        except BaseException:
            callers.all_back()
            if run_dir is not None:
                remove_empty(made)  # the folder made for a run that did not start
            raise
    for warning in settings_warnings(cfg):
        warnings.warn(warning, stacklevel=2)
    steering = build_callbacks(cfg, None)  # without a folder: only those that steer the training
    with _threads(cfg.train.threads), contextlib.ExitStack() as stack:
        stack.callback(callers.trainable_back)
        try:
            trainer = Trainer(model, data, cfg, callbacks=[*steering, *callbacks], run_dir=run_dir)
        except BaseException:
            callers.all_back()
            if run_dir is not None:
                remove_empty(made)
            raise
        for warning in max_steps_warnings(cfg.schedule, cfg.train.epochs, cfg.train.max_steps,
                                          trainer.steps_per_epoch):  # the steps of an epoch are known now
            warnings.warn(warning, stacklevel=2)
        if trainer.device.type == "cpu" and (kept := kept_warning(cfg.train.reuse_memory)) is not None:
            warnings.warn(kept, stacklevel=2)  # as train() says it
        if not writes:  # checked only if a callback saves one: building cfg's model costs time
            trainer.model_differs = functools.cache(lambda: _config_differs(model, data, cfg))
        # As train() does: a second run into the folder (fit or train, here or in another process) would mix its
        # last.ckpt and best.ckpt with this one's.
        with RunLock(Path(run_dir)) if run_dir is not None else contextlib.nullcontext():
            try:
                result = trainer.fit()
            except TrainingInterrupted as e:  # its message was only "SIGINT": say where, and what is kept
                kept = (f"progress saved to {e.checkpoint}; continue with train(cfg, resume={str(run_dir)!r})"
                        if e.checkpoint is not None else "the model keeps the weights trained so far")
                e.advice = f"{trainer.stop_reason}; {kept}"
                e.args = (e.advice,)
                raise
            finally:
                # Ready to predict with (dropout off, batch norm's running statistics), also after a Ctrl-C
                # (Jupyter's "interrupt kernel": TrainingInterrupted) or an error: the caller's model keeps the
                # weights trained so far, and was left in train mode, so its predictions drew dropout.
                model.eval()
    return result


class _CallersModel:
    """What fit() changes in the caller's model besides training it, kept to be put back.

    ``finetune.freeze`` is the call's setting: its frozen parameters stayed frozen after the call, so a second
    fit() with freeze ``["*"]`` refused and then ``["features"]`` said that too "holds every parameter", and a
    later fit() without a freeze trained only what the first had left trainable. A refused call (the Trainer's
    checks come after it moved the model to the device, to channels-last, and after init_from was loaded) also
    gets its device, layout, weights and gradient checkpointing back.
    """

    def __init__(self, model: nn.Module, keep_values: bool) -> None:
        self.model = model
        self.trainable = [(p, p.requires_grad) for p in model.parameters()]
        self.tensors = [(t, t.data) for t in (*model.parameters(), *model.buffers())]  # device and layout
        self.values = [d.clone() for _, d in self.tensors] if keep_values else None  # as init_from overwrites them
        self.checkpointing = getattr(model, "grad_checkpointing", None)

    def trainable_back(self) -> None:
        for p, flag in self.trainable:
            p.requires_grad_(flag)

    def all_back(self) -> None:
        with torch.no_grad():
            for i, (t, d) in enumerate(self.tensors):
                t.data = d
                if self.values is not None:
                    d.copy_(self.values[i])
        if self.checkpointing is not None:
            self.model.grad_checkpointing = self.checkpointing
        self.trainable_back()


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


_DESCRIBE = ("describe the model in the config, e.g. apply_overrides(cfg, ['model.name=...']), and build it with "
             "build_model(cfg.model.name, **cfg.model.options(), ...)")


def _check_config_describes(model, data, cfg: Config) -> None:
    """Raise ConfigError unless ``cfg`` describes ``model`` (:func:`_config_differs`)."""
    differs = _config_differs(model, data, cfg)
    if differs is not None:
        raise ConfigError(f"fit(): {differs}: {_DESCRIBE}")


def _config_differs(model, data, cfg: Config) -> str | None:
    """How ``cfg``'s model differs from ``model``, or None where it has ``model``'s tensors (names, shapes, crop)
    and, with its weights, computes what ``model`` does on a few training images: some options change no shape
    (lenet5's padding of 2 or 3 pixels gives the same tensors), and a checkpoint would rebuild another network."""
    with torch.random.fork_rng(devices=[]):  # its initial weights must not move the caller's dropout draws
        try:
            described = config_model(cfg, data)
        except ConfigError as e:  # a model of the user's own that cfg's [model] cannot build
            return f"the config's model (model.name = {cfg.model.name!r}) cannot be built ({e})"
    try:
        load_weights(described, model.state_dict(), source="the model given", check_values=False)
    except CheckpointError as e:
        return (f"the config describes another model than the one given (model.name = {cfg.model.name!r}, {e}); "
                "its checkpoints could not be loaded")
    probe = data.train.images[:4]
    if len(probe):
        expected = predict_logits(described, probe)
        got = predict_logits(model, probe).to(expected.device)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-3):
            return (f"the config describes another model than the one given (model.name = {cfg.model.name!r}): the "
                    "same tensors, but other outputs on the same images (an option such as padding differs), so its "
                    "checkpoints would rebuild another network")
    return None


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
