"""``mnistlab compare``: which of several runs is worth it, from their run folders alone.

Each run contributes one row (model, parameters, epochs, training seconds, best
validation accuracy, test accuracy, stop reason), read from its summary.json
(and metrics.csv for a run that has no summary yet). Rows are sorted by test
accuracy, best first; runs without a test result come last. The plot puts test
accuracy against training time and joins the runs no faster run beats.

Training seconds compare only between runs on the same kind of processor (two
2-core CPUs both called "AMD EPYC" trained the same recipe 3x apart): when the
runs' summaries name different CPUs or GPUs, the table gains a machine column
and a note says so.

>>> rows = compare_runs(["runs/"])                 # every run under runs/   # doctest: +SKIP
>>> print(format_table(rows))                                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .runfolder import RunFolderError, finite, machine_of, read_run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (supported): `mnistlab.report` failed to import
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass
class RunRow:
    run: str  # the folder, as given or found
    model: str
    dataset: str
    parameters: int | None
    epochs: int | None
    train_seconds: float | None
    best_val_accuracy: float | None
    test_accuracy: float | None
    stop_reason: str
    device: str
    machine: str | None  # the CPU (or on CUDA the GPU) it trained on; None for runs from before summaries named it
    precision: str | None = None  # fp32, bf16 or fp16 (autocast); None for runs from before summaries named it
    # the images of a test on part of the test set (data.test_limit); None for a test on all of it
    test_limit_images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a run folder, or a folder searched (recursively) for run folders; no duplicates."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RunFolderError(f"{p} does not exist")
        # A folder with results is a run; one with only a config.toml may be a folder of runs that keeps its
        # config (or another tool's) beside them: it was taken for one run, not searched, and its runs left out.
        if (p / "summary.json").is_file() or (p / "metrics.csv").is_file():
            runs = [p]
        elif p.is_dir():
            runs = _runs_under(p)
            if not runs:
                raise RunFolderError(f"{p} holds no run folders (none has a summary.json, metrics.csv or a run's "
                                     "config.toml)")
        else:
            raise RunFolderError(f"{p} is a file; give run folders or a folder of runs")
        for r in runs:
            if r.resolve() not in {f.resolve() for f in found}:
                found.append(r)
    return found


def _runs_under(folder: Path) -> list[Path]:
    """The run folders under ``folder``, through links to folders too (``Path.rglob`` skipped a run reached by
    a link), each real folder once (a link back up would loop)."""
    runs, configs, seen = [], [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        if "summary.json" in files or "metrics.csv" in files:
            runs.append(Path(top))
        elif "config.toml" in files and _run_config(top):
            configs.append(Path(top))
    # A folder with only a run's config.toml is a run stopped in its first epoch, unless runs lie under it: then
    # it is a folder of runs keeping the config they were trained with (`train --config exp/config.toml`).
    runs += [c for c in configs if not any(c in r.parents for r in runs + configs)]
    return sorted(runs)


def _run_config(folder: str) -> bool:
    """Whether ``folder``'s config.toml is a run's: a run stopped in its first epoch holds that (and perhaps a
    last.ckpt to resume) but no metrics yet, and was left out of the table. Another tool's config.toml is not."""
    try:
        config = tomllib.loads(Path(folder, "config.toml").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return all(isinstance(config.get(table), dict) for table in ("model", "data", "train"))


def _count(value: object) -> int | None:
    """A whole number read from a run's files (an int, or a float such as metrics.csv's 3.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def run_row(path: Path) -> RunRow:
    run = read_run(path, checkpoint_state=False, predictions=False)  # summary.json, metrics.csv and config.toml
    s = run.summary
    epochs = _count(s.get("epochs"))  # a hand-edited or damaged summary may hold anything
    if epochs is None and run.metrics:
        epochs = _count(run.metrics[-1].get("epoch"))
    model = s.get("model") or (run.config.get("model") or {}).get("name") or "?"
    dataset = s.get("dataset") or (run.config.get("data") or {}).get("dataset") or "?"
    if run.resumed_after is not None:  # summary.json is of the part before the resume (read_run left it out)
        stop = f"not finished (resumed after epoch {run.resumed_after})"
    elif s:
        stop = s.get("stop_reason") or "-"
    elif (run.path / "summary.json").exists():  # there, but not a readable JSON object (the report says why)
        stop = "summary.json unreadable"
    else:
        stop = "not finished (no summary.json)"
    params = s.get("parameters")
    return RunRow(
        run=str(path),
        model=str(model),
        dataset=str(dataset),
        parameters=_count(params),
        epochs=epochs,
        train_seconds=run.train_seconds,
        best_val_accuracy=run.best_val_accuracy,
        test_accuracy=finite(s.get("test_accuracy")),
        stop_reason=str(stop),
        device=str(s.get("device") or "?"),
        machine=machine_of(s),
        precision=str(s["precision"]) if s.get("precision") else None,
        test_limit_images=s.get("test_images") if s.get("test_limit") is not None else None,
    )


def compare_runs(paths: Sequence[str | Path]) -> list[RunRow]:
    """One row per run found under ``paths``, best test accuracy first (runs without one last).

    Runs on different datasets are grouped by dataset (in name order) and ranked within it: a
    Fashion-MNIST accuracy and an MNIST one measure different things.
    """
    rows = [run_row(p) for p in find_runs(paths)]
    grouped = len(_datasets(rows)) > 1
    return sorted(rows, key=lambda r: ((r.dataset == "?", r.dataset) if grouped else (), r.test_accuracy is None,
                                       -(r.test_accuracy or 0.0), r.train_seconds is None, r.train_seconds or 0.0))


def _datasets(rows: Sequence[RunRow]) -> list[str]:
    """The datasets the runs name, sorted; "?" (a run without summary.json) is not recorded, not another one."""
    return sorted({r.dataset for r in rows if r.dataset != "?"})


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_table(rows: Sequence[RunRow]) -> str:
    """An aligned text table of ``rows``; a note follows when runs come from different devices, machines,
    precisions or datasets.

    The machine (precision) column appears only when the runs name more than one machine (precision);
    a run from before summaries named it shows "not recorded" there, but does not count as another.
    """
    machines = sorted({r.machine for r in rows if r.machine})
    precisions = sorted({r.precision for r in rows if r.precision})
    datasets = _datasets(rows)
    header = ("run", "model", "parameters", "epochs", "train s", "best val acc", "test acc", "stop reason")
    body = [
        (r.run, r.model, "-" if r.parameters is None else f"{r.parameters:,}", "-" if r.epochs is None else str(r.epochs),
         "-" if r.train_seconds is None else f"{r.train_seconds:.1f}", _pct(r.best_val_accuracy),
         _pct(r.test_accuracy) + ("*" if r.test_limit_images is not None and r.test_accuracy is not None else ""),
         r.stop_reason)
        for r in rows
    ]
    left = {0, 1, 7}
    for name, distinct in (("precision", precisions), ("machine", machines)):
        if len(distinct) > 1:  # before the stop reason (the last column), which is long and free text
            n = len(header) - 1
            header = (*header[:n], name, header[n])
            body = [(*line[:n], getattr(r, name) or "not recorded", line[n]) for line, r in zip(body, rows)]
            left |= {n + 1}
    if len(datasets) > 1:  # after the model: the rows are grouped by it
        header = (*header[:2], "dataset", *header[2:])
        body = [(*line[:2], r.dataset, *line[2:]) for line, r in zip(body, rows)]
        left = {0, 1, 2} | {i + 1 for i in left if i > 1}
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
    devices = sorted({r.device for r in rows if r.device != "?"})  # a run without summary.json names none
    if len(devices) > 1:
        lines.append(f"note: the runs come from different devices ({', '.join(devices)}); "
                     "their training times are not comparable")
    elif len(machines) > 1:
        lines.append(f"note: the runs come from different machines ({', '.join(machines)}); "
                     "their training times are not comparable")
    partial = [r for r in rows if r.test_limit_images is not None and r.test_accuracy is not None]
    if partial:
        lines.append("note: * tested on the first images of the test set only (data.test_limit): "
                     + ", ".join(f"{r.run} on {r.test_limit_images:,}" for r in partial)
                     + "; an accuracy on other images is not comparable")
    if len(precisions) > 1:
        lines.append(f"note: the runs trained in different precisions ({', '.join(precisions)}); bf16 and fp16 "
                     "autocast train faster where the processor computes in them, and their results differ from fp32's")
    if len(datasets) > 1:
        lines.append(f"note: the runs are on different datasets ({', '.join(datasets)}); they are ranked within "
                     "each, as their accuracies are not comparable")
    return "\n".join(lines)


def write_compare_plot(rows: Sequence[RunRow], path: str | Path) -> Path:
    """Write the test-accuracy-against-training-time plot of ``rows`` to ``path`` (PNG)."""
    from . import plots

    labels = _short_labels([r.run for r in rows])
    points = [
        {"label": f"{lab} ({r.model})" if r.model not in lab else lab, "train_seconds": r.train_seconds,
         "test_accuracy": r.test_accuracy, "group": r.dataset}
        for lab, r in zip(labels, rows)
    ]
    return plots.save_png(plots.compare_png(points), path)


def _short_labels(runs: Sequence[str]) -> list[str]:
    """Folder names, or longer paths where two runs share a name."""
    names = [Path(r).name or r for r in runs]
    return [r if names.count(n) > 1 else n for n, r in zip(names, runs)]


__all__ = ["RunRow", "compare_runs", "find_runs", "format_table", "run_row", "write_compare_plot"]
