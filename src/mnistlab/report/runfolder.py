"""What reports and comparisons read: the files of one run folder, and nothing else.

A run folder holds (see :mod:`mnistlab.training.run`)::

    config.toml           the resolved config
    metrics.csv           one row per epoch (History callback)
    summary.json          model, parameters, test accuracy, best epoch, stop reason, ...
    test_predictions.npz  what the report needs from the final test (written here, see below)
    last.ckpt             the resume state; its callback states say what early stopping decided

``test_predictions.npz`` is written at the end of a run by
:func:`save_test_predictions`, so that ``mnistlab report`` needs neither the
dataset nor a model: the confusion matrix and the worst misclassified images
are drawn from it on any machine. It is a plain NumPy archive (no pickles;
``np.load`` reads it with ``allow_pickle=False``) of:

==================  ==========================  =========================================================
``labels``          int64 (N,)                  true class of every test image
``predictions``     int64 (N,)                  predicted class
``probabilities``   float32 (N, classes)        softmax output (400 KB for MNIST's 10,000 images)
``confusion``       int64 (classes, classes)    [true, predicted] counts
``classes``         str (classes,)              class names
``worst_index``     int64 (M,)                  test-set index of the M most confidently wrong images
``worst_images``    uint8 (M, C, H, W)          those images (M = ``WORST``, fewer if fewer are wrong)
==================  ==========================  =========================================================

"Most confidently wrong" means the lowest probability given to the true class.

:func:`read_run` gathers everything into a :class:`RunFolder`; a missing or
unreadable file is not an error but an entry in ``RunFolder.missing`` saying
what it means for the report, so an interrupted run still gets what it has.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..callbacks.base import resolve_mode
from ..errors import MnistlabError

PREDICTIONS_FILE = "test_predictions.npz"
WORST = 40  # misclassified test images kept for the report's grid
STOPPING_RULES = ("EarlyStopping", "GL", "PQ", "UP")  # callback state keys of the early-stopping rules


class RunFolderError(MnistlabError):
    """The path is not a run folder (or holds none)."""


def save_test_predictions(run_dir: str | Path, evaluation, images, classes) -> Path:
    """Write ``test_predictions.npz`` from a test :class:`~mnistlab.training.evaluate.Evaluation`.

    ``images`` are the test split's uint8 images (any device), in the order the
    evaluation saw them; only the ``WORST`` misclassified ones are stored.

    >>> save_test_predictions("runs/demo", test, data.test.images, data.classes)   # doctest: +SKIP
    PosixPath('runs/demo/test_predictions.npz')
    """
    import torch

    from ..training.checkpoint import atomic_write

    labels = evaluation.labels.cpu().numpy().astype(np.int64)
    predictions = evaluation.predictions.cpu().numpy().astype(np.int64)
    probabilities = evaluation.probabilities.cpu().numpy().astype(np.float32)
    wrong = np.flatnonzero(labels != predictions)
    p_true = probabilities[wrong, labels[wrong]] if len(wrong) else np.zeros(0, np.float32)
    worst = wrong[np.argsort(p_true, kind="stable")[:WORST]].astype(np.int64)
    worst_images = images.index_select(0, torch.as_tensor(worst, device=images.device)).cpu().numpy()
    arrays = dict(
        labels=labels,
        predictions=predictions,
        probabilities=probabilities,
        confusion=evaluation.confusion.cpu().numpy().astype(np.int64),
        classes=np.array([str(c) for c in classes]),
        worst_index=worst,
        worst_images=worst_images.astype(np.uint8),
    )
    path = Path(run_dir) / PREDICTIONS_FILE
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return path


@dataclass
class EarlyStoppingInfo:
    """What the early-stopping rule of a run decided (from last.ckpt and summary.json)."""

    rule: str  # EarlyStopping, GL, PQ or UP
    monitor: str  # the metric it watched
    best_epoch: int | None  # the epoch it judged best (the one restore_best_weights loads)
    stopped_epoch: int | None  # the epoch after which it stopped training, None if it never did
    restored: bool  # restore_best_weights was on and there was a best epoch


@dataclass
class RunFolder:
    path: Path
    config_text: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] | None = None
    early_stopping: EarlyStoppingInfo | None = None
    missing: list[str] = field(default_factory=list)  # one sentence per missing piece
    # The epoch summary.json was written after, when metrics.csv goes on past it: a resumed run that has not
    # finished (still training, or killed). Its results are then the earlier part's, left out of ``summary``.
    resumed_after: int | None = None

    @property
    def last_epoch(self) -> int | None:
        """The last epoch metrics.csv records (None without one)."""
        epochs = [e for e in (finite(r.get("epoch")) for r in self.metrics) if e is not None]
        return int(max(epochs)) if epochs else None

    @property
    def best_val_accuracy(self) -> float | None:
        """summary.json's (the validation accuracy of the tested checkpoint's epoch), else, for a run that has
        not finished, that of the epoch best.ckpt holds so far: the one metrics.csv ranks best by the run's
        ``checkpoint.monitor`` (the highest validation accuracy where nothing says which)."""
        best = finite(self.summary.get("best_val_accuracy"))
        if best is not None:
            return best
        # With checkpoint.monitor = val_loss, the highest accuracy was shown while the run was unfinished, and
        # the best.ckpt epoch's (often lower) once it finished, for the same epochs and the same best.ckpt.
        ckpt = self.config.get("checkpoint") if isinstance(self.config.get("checkpoint"), dict) else {}
        monitor, mode = ckpt.get("monitor", "val_accuracy"), ckpt.get("mode", "auto")
        if not isinstance(monitor, str) or mode not in ("min", "max", "auto"):
            monitor, mode = "val_accuracy", "max"
        mode = resolve_mode(monitor, mode)
        rows = [r for r in self.metrics
                if finite(r.get(monitor)) is not None and finite(r.get("val_accuracy")) is not None]
        if not rows:
            vals = [v for v in (finite(r.get("val_accuracy")) for r in self.metrics) if v is not None]
            return max(vals, default=None)
        sign = 1.0 if mode == "max" else -1.0
        # max() keeps the first of equal values, as ModelCheckpoint does (a later equal epoch does not replace it)
        return finite(max(rows, key=lambda r: sign * r[monitor])["val_accuracy"])

    @property
    def train_seconds(self) -> float | None:
        """summary.json's, else the sum of metrics.csv's epochs."""
        seconds = finite(self.summary.get("train_seconds"))
        if seconds is None and self.metrics:
            seconds = sum(finite(r.get("seconds")) or 0.0 for r in self.metrics) or None
        return seconds

    @property
    def name(self) -> str:
        # From the absolute path: `mnistlab report .` (inside the run folder) named the run "" on the page,
        # and `report ..` named it "..". abspath, not resolve: a link to a run keeps the name it was given.
        return Path(os.path.abspath(self.path)).name or str(self.path)

    @property
    def classes(self) -> list[str]:
        if self.predictions is not None:
            return [str(c) for c in self.predictions["classes"]]
        per_class = self.summary.get("per_class_accuracy")
        return list(per_class) if isinstance(per_class, dict) else []


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("summary.json", "metrics.csv", "config.toml"))


def read_run(path: str | Path, *, checkpoint_state: bool = True, predictions: bool = True) -> RunFolder:
    """Read a run folder. Missing files are listed in ``missing``; a folder with none of them is an error.

    ``checkpoint_state``: also read the early-stopping decision from ``last.ckpt``
    (memory-mapped, so only the few numbers needed are read, not the weights).
    ``predictions``: also read test_predictions.npz (what the report's test figures are drawn from).
    """
    path = Path(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"  # a typo was told it "is not a folder"
        raise RunFolderError(f"{path} {what}; give a run folder (holding summary.json, metrics.csv, ...)")
    if not is_run_folder(path):
        raise RunFolderError(
            f"{path} is not a run folder: it has none of summary.json, metrics.csv, config.toml "
            "(runs are written by `mnistlab train --out DIR`)"
        )
    run = RunFolder(path=path)
    _read_config(run)
    _read_metrics(run)
    _read_summary(run)
    _leave_out_results_of_before_a_resume(run)
    if predictions and run.resumed_after is None:
        _read_predictions(run)
    if checkpoint_state:
        _read_early_stopping(run)
    return run


def _read_config(run: RunFolder) -> None:
    f = run.path / "config.toml"
    try:
        run.config_text = f.read_text(encoding="utf-8-sig")  # -sig: a BOM from an editor that saved it
        config = tomllib.loads(run.config_text)
    except FileNotFoundError:
        run.missing.append("config.toml is missing: the run's settings cannot be shown.")
        return
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        run.missing.append(f"config.toml cannot be read ({e}): its text is shown as it is, if at all.")
        return
    # Sections are tables; a hand-edited `model = "fast"` is left out rather than read as one.
    run.config = {k: v for k, v in config.items() if isinstance(v, dict)}
    if len(run.config) < len(config):
        odd = ", ".join(sorted(set(config) - set(run.config)))
        run.missing.append(f"config.toml has {odd} where a [section] belongs: left out of what is read from it.")


def _read_metrics(run: RunFolder) -> None:
    f = run.path / "metrics.csv"
    try:
        text = f.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM was read into the first column's name
    except FileNotFoundError:
        run.missing.append("metrics.csv is missing: no training curves (the run ended before its first epoch?).")
        return
    except (OSError, UnicodeDecodeError) as e:
        run.missing.append(f"metrics.csv cannot be read ({e}): no training curves.")
        return
    rows = []
    try:
        for row in csv.DictReader(io.StringIO(text)):
            if None in row.values():  # fewer fields than the header: a row cut short (a crash, a copy cut off)
                run.missing.append(f"metrics.csv's row for epoch {row.get('epoch') or '?'} is cut short: left out "
                                   "of the curves.")
                continue
            parsed = {}
            for key, value in row.items():
                if key is None or value in (None, ""):
                    continue
                try:
                    parsed[key] = float(value)
                except ValueError:
                    pass
            if finite(parsed.get("epoch")) is not None:  # an inf epoch was an axis limit matplotlib refused
                rows.append(parsed)
    except csv.Error as e:  # a field past csv's size limit; NUL bytes (Python 3.10) from a crash
        run.missing.append(f"metrics.csv cannot be read ({e}): no training curves.")
        return
    if not rows:
        run.missing.append("metrics.csv holds no epochs: no training curves.")
    run.metrics = rows


def _read_summary(run: RunFolder) -> None:
    f = run.path / "summary.json"
    try:
        data = json.loads(f.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        run.missing.append("summary.json is missing: no test results (the run has not finished).")
        return
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: arrays nested deep
        run.missing.append(f"summary.json cannot be read ({e}): no test results.")
        return
    if not isinstance(data, dict):
        run.missing.append("summary.json is not a JSON object: no test results.")
        return
    # What the report and compare compute with must have its type: a hand-edited or damaged value is left out
    # (and said so), not a traceback further on.
    for key, kinds in _SUMMARY_TYPES.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            del data[key]
            run.missing.append(f"summary.json's {key} is {type(value).__name__} {_clip(value)}, not what a run "
                               "writes there: left out.")
    run.summary = data
    if data.get("test_accuracy") is None:
        why = data.get("stop_reason") or "it did not finish"
        run.missing.append(f"the run has no test result ({why}).")


# What summary.json says of the run's setup, still true while a resumed part of it trains (the device, the
# precision and the results may change with the resume).
_SETUP_KEYS = ("model", "dataset", "parameters", "trainable_parameters", "train_images", "val_images")


def _leave_out_results_of_before_a_resume(run: RunFolder) -> None:
    """A resumed run keeps the summary.json and test_predictions.npz of its earlier part until it ends (a kill,
    an OOM or a power cut leaves them for good), while metrics.csv grows each epoch: the report showed that
    earlier test, and its best epoch, as the run's, and compare ranked the run by it.

    An interrupted part's summary (Ctrl-C) counts the epochs it completed, each already in metrics.csv: epochs
    past it were trained by a resume since, so its stop reason, epochs and seconds are no longer the run's."""
    done, last = run.summary.get("epochs"), run.last_epoch
    if not isinstance(done, int) or last is None or last <= done:
        return
    run.resumed_after = done
    run.summary = {k: v for k, v in run.summary.items() if k in _SETUP_KEYS}
    run.missing = [m for m in run.missing if not m.startswith("the run has no test result")]  # the earlier part's
    old = "summary.json" + (f" and {PREDICTIONS_FILE} are" if (run.path / PREDICTIONS_FILE).is_file() else " is")
    run.missing.append(f"{old} of the run as it was after epoch {done}; metrics.csv goes on to epoch {last}: it "
                       "was resumed and has not finished (it is training, or was stopped without a word): no test "
                       "results until it finishes.")


_NUMBER = (int, float)
_SUMMARY_TYPES: dict[str, type | tuple[type, ...]] = {
    "test_accuracy": _NUMBER, "test_loss": _NUMBER, "best_val_accuracy": _NUMBER, "train_seconds": _NUMBER,
    "best_epoch": int, "epochs": int, "steps": int, "parameters": int, "per_class_accuracy": dict,
}


def _clip(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _check_predictions(data: dict[str, np.ndarray]) -> None:
    """The arrays of test_predictions.npz agree with each other (a ValueError saying how, if not)."""
    labels, preds, cm, classes = data["labels"], data["predictions"], data["confusion"], data["classes"]
    n, k = labels.shape[0] if labels.ndim == 1 else -1, len(classes)
    worst, images = data["worst_index"], data["worst_images"]
    probs = data.get("probabilities")
    problems = [
        what for what, bad in (
            ("labels and predictions differ in shape", labels.ndim != 1 or preds.shape != labels.shape),
            (f"the confusion matrix is not {k} x {k}", cm.shape != (k, k)),
            ("a label or prediction is not a class", n > 0 and not (
                np.issubdtype(labels.dtype, np.integer) and np.issubdtype(preds.dtype, np.integer)
                and 0 <= min(labels.min(), preds.min()) and max(labels.max(), preds.max()) < k)),
            ("worst_index points outside the test set", worst.ndim != 1 or not np.issubdtype(worst.dtype, np.integer)
             or (worst.size > 0 and not (0 <= worst.min() and worst.max() < max(n, 0)))),
            ("worst_images does not match worst_index", images.shape[:1] != worst.shape[:1]),
            # an image is H x W, or C x H x W with 1 (gray), 3 or 4 channels: what the report can draw
            ("worst_images are not images", not (images.ndim == 3 or (images.ndim == 4 and images.shape[1] in (1, 3, 4)))),
            ("probabilities are not one row per image and a column per class",
             probs is not None and probs.shape != (n, k)),
        ) if bad
    ]
    if problems:
        raise ValueError(f"inconsistent arrays: {'; '.join(problems)}")


def _read_predictions(run: RunFolder) -> None:
    f = run.path / PREDICTIONS_FILE
    if not f.is_file():
        run.missing.append(
            f"{PREDICTIONS_FILE} is missing (the run did not finish, or an older mnistlab wrote it): "
            "no confusion matrix, per-class chart from the test predictions or misclassified images. "
            "`mnistlab evaluate RUN` prints the confusion matrix from the dataset."
        )
        return
    try:
        with np.load(f, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        needed = ("labels", "predictions", "confusion", "classes", "worst_index", "worst_images")
        lacking = [k for k in needed if k not in data]
        if lacking:
            raise ValueError(f"it lacks {', '.join(lacking)}")
        _check_predictions(data)
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile) as e:
        run.missing.append(f"{PREDICTIONS_FILE} cannot be read ({e}): no confusion matrix or misclassified images.")
        return
    run.predictions = data


def _read_early_stopping(run: RunFolder) -> None:
    es = run.config.get("early_stopping", {}) if isinstance(run.config.get("early_stopping"), dict) else {}
    criterion = es.get("criterion", "none")
    if not isinstance(criterion, str):  # a damaged config (a list where a name belongs)
        run.missing.append(f"config.toml's early_stopping.criterion is {_clip(criterion)}, not a name: the early "
                           "stopping decision is not shown.")
        return
    if criterion == "none":
        return
    monitor = es.get("monitor", "val_loss") if criterion == "patience" else f"val_{es.get('error', 'loss')}"
    stopped_by = run.summary.get("stopped_by")
    stopped = run.summary.get("epochs") if stopped_by == "early_stopping" else None
    info = EarlyStoppingInfo(
        rule={"patience": "EarlyStopping"}.get(criterion, str(criterion).upper()),
        monitor=monitor,
        best_epoch=None,
        stopped_epoch=int(stopped) if stopped is not None else None,
        restored=False,
    )
    said = run.summary.get("restored_by_early_stopping")
    tested = run.summary.get("best_epoch")
    if said is True and isinstance(tested, int) and not isinstance(tested, bool) and tested > 0:
        # best.ckpt, the tested model, is then the rule's best epoch (run.py): known without last.ckpt, which
        # users delete once a run is done (the page said "the epoch early stopping judged best is unknown").
        info.best_epoch, info.restored = tested, True
        run.early_stopping = info
        return
    state = _stopping_state(run)
    if state is not None:  # numbers from a file: int() of anything else (a damaged state) would raise
        best, stopped_at = state.get("best_epoch"), state.get("stopped_epoch")
        info.best_epoch = best if isinstance(best, int) and not isinstance(best, bool) else None
        # A stop stays in the state through a resume with more epochs (or a larger patience): the run went on
        # past it. It is this run's end only where summary.json says early stopping ended it, or, without a word
        # from summary.json, where it is the last epoch recorded.
        current = stopped_by == "early_stopping" if stopped_by is not None else stopped_at == run.last_epoch
        if isinstance(stopped_at, int) and not isinstance(stopped_at, bool) and current:
            info.stopped_epoch = stopped_at
    # summary.json says whether the weights were restored: restore_best_weights turned on by a resume after the
    # best epoch has no weights to restore, and the report said "It restored the weights of epoch N" while
    # best.ckpt of another epoch was tested. The config decides only for a run that has not said (not finished).
    restore = said if isinstance(said, bool) else bool(es.get("restore_best_weights"))
    info.restored = restore and info.best_epoch is not None
    run.early_stopping = info


def _stopping_state(run: RunFolder) -> dict[str, Any] | None:
    """The early-stopping rule's state in last.ckpt, or None (with a note in ``missing``)."""
    f = run.path / "last.ckpt"
    if not f.is_file():
        run.missing.append("last.ckpt is missing: the epoch early stopping judged best is unknown.")
        return None
    try:
        import torch

        # mmap: the weights are not read; weights_only: nothing but tensors and plain data is unpickled.
        payload = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        states = payload.get("callbacks", {}) if isinstance(payload, dict) else {}
    except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint means the same here
        run.missing.append(f"last.ckpt cannot be read ({type(e).__name__}): the epoch early stopping judged best is unknown.")
        return None
    for key in STOPPING_RULES:
        if isinstance(states.get(key), dict):
            return states[key]
    run.missing.append("last.ckpt holds no early-stopping state: the epoch it judged best is unknown.")
    return None


def machine_of(summary: dict[str, Any]) -> str | None:
    """The processor a run trained on, from its summary: the GPU on CUDA, else the CPU
    (e.g. "AMD EPYC (AVX2)"); None for runs from before summaries named it."""
    name = summary.get("gpu") if str(summary.get("device", "")).startswith("cuda") else summary.get("cpu")
    return str(name) if name else None


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing or not a finite number."""
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of hundreds of digits, from a JSON file
        return None
    return v if math.isfinite(v) else None


__all__ = [
    "PREDICTIONS_FILE",
    "WORST",
    "EarlyStoppingInfo",
    "RunFolder",
    "RunFolderError",
    "finite",
    "is_run_folder",
    "machine_of",
    "read_run",
    "save_test_predictions",
]
