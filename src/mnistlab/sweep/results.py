"""What a sweep leaves besides its trial folders: results.csv, best.toml and objective.png.

All three are made from the study alone (any process can rewrite them), and the
table is the one ``mnistlab sweep`` prints at the end: finished trials sorted by
the objective, best first, then pruned ones, then failed or still running ones.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import config_to_toml
from .spec import SweepSpec, apply_params

_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1}  # then FAIL, RUNNING, WAITING


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None  # best objective over the trial's epochs (pruned: up to where it stopped)
    labels: dict[str, Any]  # Optuna's parameter values (see spec.Param.labels)
    params: dict[str, Any]  # the config values
    epochs: int | None
    seconds: float | None
    run_dir: str | None
    note: str  # stop reason or error


def trial_row(t, spec: SweepSpec) -> TrialRow:
    a = t.user_attrs
    labels = {p.key: t.params[p.key] for p in spec.params if p.key in t.params}
    value = a.get("objective")
    return TrialRow(
        number=t.number, state=t.state.name, value=float(value) if value is not None else None, labels=labels,
        params={k: spec.param(k).value_of(v) for k, v in labels.items()}, epochs=a.get("epochs"),
        seconds=a.get("seconds"), run_dir=a.get("run_dir"), note=str(a.get("error") or a.get("stop_reason") or ""),
    )


def sort_rows(rows: Sequence[TrialRow], direction: str) -> list[TrialRow]:
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(rows, key=lambda r: (_STATE_ORDER.get(r.state, 2), r.value is None,
                                       sign * r.value if r.value is not None else 0.0, r.number))


def best_row(rows: Sequence[TrialRow], direction: str) -> TrialRow | None:
    """The best COMPLETE trial (pruned ones stopped before the end, as Optuna's study.best_trial)."""
    done = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    return sort_rows(done, direction)[0] if done else None


def collect(study, spec: SweepSpec) -> list[TrialRow]:
    return sort_rows([trial_row(t, spec) for t in study.get_trials(deepcopy=False)], spec.direction)


def _value(v: Any) -> str:
    if v is None:  # an optional key listed as "none" (unset), as the sweep file gives it
        return "none"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace(" ", "")


def trial_line(t, spec: SweepSpec) -> str:
    """The one line printed as each trial ends."""
    r = trial_row(t, spec)
    params = " ".join(f"{k}={_value(v)}" for k, v in r.params.items())
    value = "-" if r.value is None else f"{r.value:.4f}"
    return f"trial {r.number:>4}  {r.state.lower():<8}  {spec.objective} {value}  {params}  ({r.epochs} epoch{'' if r.epochs == 1 else 's'}, {r.seconds} s)"


def format_table(rows: Sequence[TrialRow], spec: SweepSpec) -> str:
    keys = [p.key for p in spec.params]
    header = ["trial", "state", spec.objective, *keys, "epochs", "seconds"]
    body = [
        [str(r.number), r.state.lower(), "-" if r.value is None else f"{r.value:.4f}",
         *(_value(r.params[k]) if k in r.params else "-" for k in keys),
         "-" if r.epochs is None else str(r.epochs), "-" if r.seconds is None else f"{r.seconds:.1f}"]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.rjust(w) if i in (0, 2) or i >= len(header) - 2 else c.ljust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)])


def write_csv(rows: Sequence[TrialRow], spec: SweepSpec, path: Path) -> Path:
    keys = [p.key for p in spec.params]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", "state", spec.objective, *keys, "epochs", "seconds", "run_dir", "note"])
    for r in rows:
        w.writerow([r.number, r.state, "" if r.value is None else repr(r.value),
                    *(_csv_value(r.params, k) for k in keys), r.epochs, r.seconds, r.run_dir, r.note])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _csv_value(params: dict[str, Any], key: str) -> Any:
    """A trial's value of a key in results.csv: empty where the trial drew none, ``none`` where it was unset."""
    if key not in params:
        return ""
    return "none" if params[key] is None else params[key]


def best_toml(spec: SweepSpec, best: TrialRow, path: Path) -> str:
    """The base config with the best trial's values: a preset for ``mnistlab train --config``, to be
    written to ``path`` (which its header names)."""
    cfg = apply_params(spec, best.labels)
    changed = ", ".join(f"{k} = {_value(v)}" for k, v in best.params.items())
    head = (f"# The best trial of sweep {spec.study_name!r}: trial {best.number}, {spec.objective} {best.value:.6g} "
            f"(best epoch on the validation split).\n# Its values: {changed}\n"
            f"# Written by `mnistlab sweep`; train with: mnistlab train --config {shlex.quote(str(path))}\n\n")
    return head + config_to_toml(cfg)


def objective_png(rows: Sequence[TrialRow], spec: SweepSpec) -> bytes:
    """The objective of each trial in trial order, pruned ones marked, and the best so far as a step line."""
    from ..report.plots import _figure, _png, plain

    fig = _figure(7, 4)
    ax = fig.add_subplot()
    ordered = sorted((r for r in rows if r.value is not None), key=lambda r: r.number)
    for state, marker, color, label in (("COMPLETE", "o", "#1f77b4", "complete"), ("PRUNED", "x", "#d62728", "pruned")):
        pts = [r for r in ordered if r.state == state]
        if pts:
            ax.scatter([r.number for r in pts], [r.value for r in pts], marker=marker, color=color, label=label, zorder=3)
    best, xs, ys = None, [], []
    better = (lambda a, b: a > b) if spec.direction == "maximize" else (lambda a, b: a < b)
    for r in ordered:
        if r.state == "COMPLETE" and math.isfinite(r.value) and (best is None or better(r.value, best)):
            best = r.value
        if best is not None:
            xs.append(r.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#2a9d3a", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{spec.objective} (best epoch)")
    ax.set_title(f"sweep {plain(spec.study_name)}: {spec.direction} {spec.objective}")
    if ordered:
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def write_results(study, spec: SweepSpec, out: Path) -> tuple[list[TrialRow], dict[str, Path]]:
    """results.csv, objective.png and (once a trial has completed) best.toml in ``out``."""
    rows = collect(study, spec)
    files = {"results": write_csv(rows, spec, out / "results.csv")}
    try:
        png = objective_png(rows, spec)
    except Exception as e:  # noqa: BLE001 - e.g. matplotlib left half-imported by a Ctrl-C: the table still counts
        print(f"mnistlab sweep: warning: objective.png was not drawn ({type(e).__name__}: {e})", file=sys.stderr)
    else:
        files["plot"] = out / "objective.png"
        files["plot"].write_bytes(png)
    best = best_row(rows, spec.direction)
    if best is not None:
        files["best"] = out / "best.toml"
        files["best"].write_text(best_toml(spec, best, files["best"]), encoding="utf-8")
    return rows, files
