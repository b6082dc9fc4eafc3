"""Training: the fit loop, evaluation, checkpoint I/O and whole runs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..callbacks.base import Callback
from ..config import Config
from .checkpoint import load_model, read_checkpoint, save_checkpoint
from .evaluate import Evaluation, evaluate
from .fit import FitResult, Trainer, TrainingInterrupted
from .run import RunResult, train


def fit(
    model,
    data,
    cfg: Config | None = None,
    *,
    callbacks: Iterable[Callback] = (),
    run_dir: str | Path | None = None,
) -> FitResult:
    """Train ``model`` on a :class:`~mnistlab.data.DataBundle` in this process.

    With ``run_dir`` the trainer writes last.ckpt there (and callbacks may
    write more); without it nothing touches the disk.
    """
    return Trainer(model, data, cfg or Config(), callbacks=callbacks, run_dir=run_dir).fit()


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
