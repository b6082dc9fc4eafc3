"""A whole run: folder, data, model, callbacks, fit, final test, summary.json.

This is what ``mnistlab train`` calls; notebooks can call :func:`train` too.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import torch

from ..callbacks import Callback, build_callbacks
from ..config import Config, config_to_toml
from ..data import load_data
from ..errors import RunDirError
from ..models import build_model
from ..models.summary import count_parameters
from .checkpoint import atomic_write, model_from_checkpoint, read_checkpoint
from .display import Display
from .evaluate import Evaluation, evaluate
from .fit import FitResult, Trainer, TrainingInterrupted, resolve_device


@dataclass
class RunResult:
    run_dir: Path
    fit: FitResult | None
    test: Evaluation | None
    summary: dict[str, Any]


def default_run_dir(model_name: str, root: str | Path = "runs") -> Path:
    """``runs/<date>-<time>-<model>``, with a counter if that exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{model_name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


class RunLock:
    """``run.lock`` holding our pid: a second run into the same folder is refused.

    A lock left by a process that no longer exists (kill -9) is taken over.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "run.lock"

    def __enter__(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise RunDirError(
                        f"{self.path.parent} is in use by another mnistlab run (pid {pid}); "
                        "wait for it to finish or choose another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as e:
                raise RunDirError(f"cannot write to run folder {self.path.parent}: {e.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise RunDirError(f"could not take the lock {self.path}")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_run_dir(path: Path, resume: bool) -> None:
    """Create the folder and check, before any training, that it is writable and free."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run folder {path}: {e.strerror or e}") from None
    if not resume and (path / "last.ckpt").exists():
        raise RunDirError(
            f"{path} already holds a run; continue it with `mnistlab train --resume {path}` or choose another --out"
        )


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2).encode() + b"\n"))


def train(
    cfg: Config,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: Iterable[Callback] = (),
    quiet: bool = False,
) -> RunResult:
    """Train as ``cfg`` says, into a run folder, and test the best checkpoint at the end.

    ``resume`` is a run folder (or a checkpoint in it) to continue; ``cfg`` must
    then be the stored config with the user's changes applied (see the CLI).

    >>> result = train(Config(), out="runs/demo")          # doctest: +SKIP
    >>> result.summary["test_accuracy"]                     # doctest: +SKIP
    0.9912
    """
    wall0 = time.perf_counter()
    payload = None
    if resume is not None:
        resume = Path(resume)
        ckpt = resume / "last.ckpt" if resume.is_dir() else resume
        payload = read_checkpoint(ckpt)
        run_dir = ckpt.parent
    else:
        run_dir = Path(out) if out is not None else default_run_dir(cfg.model.name)
    prepare_run_dir(run_dir, resume=payload is not None)
    display = Display(quiet=quiet, progress=cfg.train.progress)
    with RunLock(run_dir):
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        data = load_data(cfg.data, device=device)
        model = build_model(
            cfg.model.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            mean=data.mean,
            std=data.std,
            **cfg.model.options(),
        )
        atomic_write(run_dir / "config.toml", lambda f: f.write(config_to_toml(cfg).encode()))
        cbs = build_callbacks(cfg, run_dir) + list(callbacks)
        trainer = Trainer(model, data, cfg, callbacks=cbs, run_dir=run_dir, display=display, device=device)
        if payload is not None:
            trainer.restore(payload)
            display.log(f"resuming {run_dir} after epoch {trainer.epoch} (step {trainer.step})")
        params = count_parameters(model)
        display.log(
            f"training {cfg.model.name} ({params:,} parameters) on {data.dataset}: "
            f"{len(data.train):,} train / {len(data.val):,} validation images, {device}, "
            f"{torch.get_num_threads()} threads -> {run_dir}"
        )
        summary: dict[str, Any] = {
            "model": cfg.model.name,
            "dataset": data.dataset,
            "parameters": params,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "train_images": len(data.train),
            "val_images": len(data.val),
        }
        try:
            result = trainer.fit()
        except TrainingInterrupted as e:
            summary.update(
                stop_reason=trainer.stop_reason,
                stopped_by="interrupted",
                epochs=trainer.epoch,
                train_seconds=trainer.train_seconds,
                resume_with=f"mnistlab train --resume {run_dir}",
            )
            write_json(run_dir / "summary.json", summary)
            display.log(f"\n{trainer.stop_reason}; progress saved to {e.checkpoint}")
            display.log(f"resume with: mnistlab train --resume {run_dir}")
            raise

        best_path = run_dir / "best.ckpt"
        if best_path.exists():
            best = read_checkpoint(best_path)
            test_model = model_from_checkpoint(best).to(device)
            evaluated, best_epoch = "best.ckpt", int(best["epoch"])
        else:  # no validated epoch was ever better than nothing (e.g. non-finite loss in epoch 1)
            test_model, evaluated, best_epoch = result.model, "final weights", result.epochs
        test = evaluate(test_model, data.test, cfg.train.eval_batch_size, data.num_classes)
        best_row = next((h for h in result.history if h["epoch"] == best_epoch), None)
        summary.update(
            test_accuracy=test.accuracy,
            test_loss=test.loss,
            evaluated=evaluated,
            best_epoch=best_epoch,
            best_val_accuracy=best_row["val_accuracy"] if best_row else None,
            epochs=result.epochs,
            steps=result.steps,
            train_seconds=result.train_seconds,
            wall_seconds=time.perf_counter() - wall0,
            stop_reason=result.stop_reason,
            stopped_by=result.stopped_by,
            per_class_accuracy=dict(zip(data.classes, test.per_class_accuracy)),
        )
        write_json(run_dir / "summary.json", summary)
        display.log(f"stopped: {result.stop_reason}")
        display.log(
            f"test accuracy {100 * test.accuracy:.2f}% (loss {test.loss:.4f}) with {evaluated} from epoch {best_epoch}; "
            f"{result.train_seconds:.1f} s of training; run folder: {run_dir}"
        )
    return RunResult(run_dir=run_dir, fit=result, test=test, summary=summary)
