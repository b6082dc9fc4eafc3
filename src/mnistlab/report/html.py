"""``report.html``: one self-contained page per run, drawn from the run folder alone.

The page embeds its images as ``data:`` URIs, so it can be mailed or copied
anywhere; the same images are also written as PNG files under ``plots/``
beside it. It has no scripts and loads nothing from the network.

``docs/report.png`` shows one: the default model trained on 10,000 images with
a constant learning rate, stopped by ``--early-stopping patience:2`` after
epoch 8 (``chromium --headless --screenshot --window-size=1320,2640``).

>>> write_report("runs/my-run").path                   # doctest: +SKIP
PosixPath('runs/my-run/report.html')
"""

from __future__ import annotations

import base64
import html
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .runfolder import RunFolder, RunFolderError, finite, is_run_folder, machine_of, read_run

PLOTS_DIR = "plots"
FIGURES = ("curves", "confusion", "per_class", "misclassified")  # the names _figures draws, as plots/NAME.png


@dataclass
class Report:
    path: Path  # report.html
    images: dict[str, Path] = field(default_factory=dict)  # name -> PNG file
    missing: list[str] = field(default_factory=list)  # what the run folder lacked


def _percent(x: Any, digits: int = 2) -> str:
    v = finite(x)
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _seconds(x: Any) -> str:
    v = finite(x)
    if v is None:
        return "-"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _epochs(n: Any, otherwise: int | None = None) -> str:
    """An epoch count from summary.json (a diverged run's null read "None"), else ``otherwise`` (metrics.csv's)."""
    if isinstance(n, int) and not isinstance(n, bool):
        return str(n)
    return "-" if otherwise is None else str(otherwise)


def _figures(run: RunFolder) -> list[tuple[str, str, str, bytes]]:
    """``(name, title, caption, png)`` for every figure the run's files allow."""
    out = []
    s = run.summary
    if run.metrics:
        best = s.get("best_epoch")
        es = run.early_stopping
        notes = []
        if best is not None:
            notes.append(f"Dashed green: epoch {best}, whose weights ({s.get('evaluated', 'best.ckpt')}) were tested.")
        chosen = None
        if es is not None:
            if es.stopped_epoch is not None:
                notes.append(f"Dotted red: early stopping ({es.rule} on {es.monitor}) ended training after epoch "
                             f"{es.stopped_epoch}.")
            else:
                notes.append(f"Early stopping ({es.rule} on {es.monitor}) was on but did not stop training.")
            if es.best_epoch is not None:
                chosen = es.best_epoch
                verb = "restored the weights of" if es.restored else "judged best"
                where = "" if es.best_epoch != best else " (the same epoch as best.ckpt)"
                notes.append(f"It {verb} epoch {es.best_epoch}{where}" + (
                    "; dash-dotted purple." if es.best_epoch != best else "."))
        png = plots.curves_png(
            run.metrics,
            best_epoch=int(best) if best is not None else None,
            stopped_epoch=es.stopped_epoch if es else None,
            chosen_epoch=chosen,
            chosen_label="early stopping restored" if es is not None and es.restored else "early stopping's best",
        )
        out.append(("curves", "Training curves", " ".join(notes), png))
    p = run.predictions
    classes = run.classes
    if p is not None:
        out.append(("confusion", "Confusion matrix", "Rows: true class; columns: predicted class. Colour: the "
                    "fraction of the row (square-root scale, so that small error counts show).",
                    plots.confusion_png(p["confusion"], classes)))
        cm = p["confusion"]
        totals = cm.sum(1)
        acc = [float(cm[i, i] / totals[i]) if totals[i] else None for i in range(len(classes))]
        out.append(("per_class", "Per-class accuracy", "Test accuracy of each class; the worst in red.",
                    plots.per_class_png(acc, classes, finite(s.get("test_accuracy")))))
        idx = p["worst_index"]
        labels, preds = p["labels"][idx], p["predictions"][idx]
        probs = p.get("probabilities")
        if probs is not None and len(idx):
            p_pred = probs[idx, preds]
            p_true = probs[idx, labels]
        else:
            p_pred = p_true = np.full(len(idx), np.nan)
        wrong = int((p["labels"] != p["predictions"]).sum())
        if wrong == 0:
            return out  # render_html says that no image was misclassified
        out.append(("misclassified", "Worst misclassified test images",
                    f"The {len(idx)} test images given the lowest probability for their true class "
                    f"(of {wrong:,} misclassified), with their index in the test set.",
                    plots.misclassified_png(p["worst_images"], labels, preds, p_pred, p_true, classes, idx)))
    elif isinstance(s.get("per_class_accuracy"), dict) and any(finite(v) is not None
                                                               for v in s["per_class_accuracy"].values()):
        # (a diverged run's are all null: its report has no test figures)
        pc = s["per_class_accuracy"]
        out.append(("per_class", "Per-class accuracy", "Test accuracy of each class (from summary.json); the worst in red.",
                    plots.per_class_png([finite(v) for v in pc.values()], list(pc), finite(s.get("test_accuracy")))))
    return out


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1320px;
       padding: 0 1.5rem; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.3rem; }
.sub { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1.2rem 0; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 0.6rem 1rem; min-width: 9rem; }
.card .v { font-size: 1.5rem; font-weight: 600; } .card .k { color: #666; font-size: 0.85rem; }
.missing { background: #fff4e5; border: 1px solid #f0c36d; border-radius: 8px; padding: 0.6rem 1rem; }
.row { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; } td, th { border-bottom: 1px solid #eee; padding: 0.25rem 0.8rem;
text-align: left; vertical-align: top; } th { color: #555; font-weight: 500; }
pre { background: #f6f8fa; padding: 1rem; border-radius: 8px; overflow-x: auto; font-size: 0.85rem; }
footer { color: #888; font-size: 0.8rem; margin-top: 3rem; }
"""


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])


def _figure_html(name: str, title: str, caption: str, png: bytes, bold_title: bool = False) -> str:
    """A figure no wider than its image, so that its caption wraps under it and two fit side by side."""
    w, h = _png_size(png)
    data = base64.b64encode(png).decode("ascii")
    lead = f"<strong>{html.escape(title)}.</strong> " if bold_title else ""
    return (
        f'<figure style="max-width: {w}px"><img src="data:image/png;base64,{data}" alt="{html.escape(title)}" '
        f'id="img-{name}" width="{w}" height="{h}"><figcaption>{lead}{html.escape(caption)}</figcaption></figure>'
    )


def _value(v: Any) -> str:
    if v is None or isinstance(v, bool):  # as summary.json has them (null, true), not Python's None and True
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return f"<code>{html.escape(json.dumps(v))}</code>"
    return html.escape(str(v))


def render_html(run: RunFolder, figures: list[tuple[str, str, str, bytes]]) -> str:
    """The page for ``run`` with ``figures`` (as from ``_figures``) embedded."""
    s = run.summary
    e = html.escape
    title = f"{s.get('model', '?')} on {s.get('dataset', '?')}" if s else run.name
    cards = [
        # a quick check on part of the test set (data.test_limit) says so: its accuracy is of those images only
        ("test accuracy" + (f" (first {s['test_images']:,} images)" if s.get("test_limit") is not None
                            and isinstance(s.get("test_images"), int) else ""), _percent(s.get("test_accuracy"))),
        ("test loss", f"{finite(s.get('test_loss')):.4f}" if finite(s.get("test_loss")) is not None else "-"),
        ("best val accuracy", _percent(run.best_val_accuracy)),
        ("parameters", f"{s['parameters']:,}" if isinstance(s.get("parameters"), int) else "-"),
        # best_epoch 0: no epoch finished (diverged in epoch 1), and the weights as it stopped were tested
        ("epochs (best)", f"{_epochs(s.get('epochs'), run.last_epoch)} ({_epochs(s.get('best_epoch') or None)})"),
        ("training time", _seconds(run.train_seconds)),
    ]
    machine = machine_of(s)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mnistlab report: {e(title)} ({e(run.name)})</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="sub">run folder <code>{e(run.name)}</code>'
        + (f" &middot; stopped: {e(str(s['stop_reason']))}" if s.get("stop_reason") else "")
        + (f" &middot; {e(str(s.get('device')))}" + (f" ({e(machine)})" if machine else "")
           + (f", {s['precision']} autocast" if s.get("precision") in ("bf16", "fp16") else "")
           + f", torch {e(str(s.get('torch')))}" if s.get("device") else "")
        + "</p>",
        '<div class="cards">'
        + "".join(f'<div class="card"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>' for k, v in cards)
        + "</div>",
    ]
    if run.missing:
        parts.append('<div class="missing"><strong>Not in this report</strong>, because the run folder lacks it:<ul>'
                     + "".join(f"<li>{e(m)}</li>" for m in run.missing) + "</ul></div>")
    by_name = {f[0]: f for f in figures}
    if "curves" in by_name:
        parts += [f"<h2>{e(by_name['curves'][1])}</h2>", _figure_html(*by_name["curves"])]
    side = [by_name[n] for n in ("confusion", "per_class") if n in by_name]
    if side:
        parts.append("<h2>Test set</h2>")
        parts.append('<div class="row">' + "".join(_figure_html(*f, bold_title=True) for f in side) + "</div>")
    if "misclassified" in by_name:
        parts += [f"<h2>{e(by_name['misclassified'][1])}</h2>", _figure_html(*by_name["misclassified"])]
    elif run.predictions is not None:
        parts += ["<h2>Misclassified test images</h2>", "<p>None: every test image was classified correctly.</p>"]
    if s:
        rows = "".join(f"<tr><th>{e(str(k))}</th><td>{_value(v)}</td></tr>" for k, v in s.items())
        said = ("summary.json as the run wrote it." if run.resumed_after is None else
                f"What summary.json says of the run's setup; the rest of it is of the run as it was after epoch "
                f"{run.resumed_after}, before it was resumed.")
        parts += ["<h2>Summary</h2>", f"<p>{e(said)}</p>", f"<table>{rows}</table>"]
    if run.config_text is not None:
        parts += ["<h2>Config</h2>", "<p>config.toml: the resolved settings of the run (commented keys keep the "
                  "model's defaults).</p>", f"<pre>{e(run.config_text)}</pre>"]
    from .. import __version__ as version

    parts.append(f"<footer>Written by mnistlab {e(str(version))} at {datetime.now():%Y-%m-%d %H:%M} from the files "
                 "in the run folder.</footer></body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Report:
    """Write ``report.html`` and its PNGs (under ``plots/``) for the run in ``run_dir``.

    ``out``: the folder to write into (default: the run folder itself). Only
    the run folder's files are read; what it lacks is listed at the top of the page.
    """
    from ..folders import missing_folders, remove_empty, same_path
    from ..training.checkpoint import atomic_write

    run = read_run(run_dir)
    target = Path(out) if out is not None else run.path
    if out is not None and is_run_folder(target) and not same_path(target, run.path):
        raise RunFolderError(f"--out {out} is another run's folder: its report.html and plots would be replaced; "
                             "choose a folder that is not a run")
    figures = _figures(run)
    page = render_html(run, figures)
    report = Report(path=target / "report.html", missing=list(run.missing))
    made = missing_folders(target / PLOTS_DIR)
    new_files: list[Path] = []
    try:
        (target / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        for name, _, _, png in figures:
            path = target / PLOTS_DIR / f"{name}.png"
            if not path.exists():
                new_files.append(path)
            atomic_write(path, lambda f, png=png: f.write(png))
            report.images[name] = path
        # a name that is not UTF-8 (a folder's bytes, read as lone surrogates) as \x escapes, as the CLI prints it
        atomic_write(report.path, lambda f: f.write(page.encode("utf-8", "backslashreplace")))
    except BaseException as e:
        # A report that could not be written, or was interrupted (Ctrl-C, SIGTERM), leaves none of its pieces
        # behind (plots, folders made for them).
        for path in new_files:
            path.unlink(missing_ok=True)
        remove_empty(made)
        if not isinstance(e, OSError):
            raise
        hint = "" if out is not None else " (a run folder from elsewhere may be read-only: write the report with --out DIR)"
        raise RunFolderError(f"cannot write the report into {target}: {e.strerror or e}{hint}") from None
    # A figure this report does not have is an earlier report's (of the test before a resume, or of another run
    # whose report was written to the same --out): left beside this page, it was taken for this run's.
    for name in sorted(set(FIGURES) - set(report.images)):
        try:
            (target / PLOTS_DIR / f"{name}.png").unlink(missing_ok=True)
        except OSError as e:  # the page is written: a figure that cannot go is said, not an error
            report.missing.append(f"{PLOTS_DIR}/{name}.png is an earlier report's, and could not be removed "
                                  f"({e.strerror or e}).")
    return report


def write_run_report(run_dir: str | Path, test, test_images, classes) -> Report:
    """What ``train()`` calls at the end of a run: store the test predictions, then write the report."""
    from .runfolder import save_test_predictions

    save_test_predictions(run_dir, test, test_images, classes)
    return write_report(run_dir)


__all__ = ["Report", "render_html", "write_report", "write_run_report"]
