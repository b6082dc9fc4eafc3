"""The report's figures, each returned as PNG bytes.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``), never
``pyplot``: no display, no GUI backend and no global state are involved, so
this works on a headless server and does not disturb a notebook's own plots.

>>> png = curves_png(run.metrics, best_epoch=3)        # doctest: +SKIP
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"                    # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

DPI = 100
TRAIN, VAL, LR = "#1f77b4", "#ff7f0e", "#2ca02c"
EMA = "#8c564b"  # the weight average's validation values ([ema]), dashed
BEST, STOP, CHOSEN = "#2a9d3a", "#d62728", "#9467bd"
ROW_INCHES = 1.8  # a row of the misclassified grid: an image and its two-line title
TITLE_PAD_INCHES = 6 / 72  # between an image and its title (matplotlib's default pad, 6 pt)


def plain(text: object) -> str:
    """A string from a run (a folder or class name) drawn as it is: matplotlib reads ``$...$`` as maths, and
    one it cannot parse (``$\\foo$``) raised out of the whole report.

    >>> plain("m$x$"), plain("7")
    ('m\\\\$x\\\\$', '7')
    """
    # A name that is not UTF-8 (a folder's bytes, read as lone surrogates) cannot be drawn: its bytes as \x
    # escapes can, as the CLI prints them.
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8").replace("$", r"\$")


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _column(rows: Sequence[dict[str, float]], key: str) -> np.ndarray | None:
    if not rows or not any(key in r for r in rows):
        return None
    return np.array([r.get(key, math.nan) for r in rows], dtype=np.float64)


def _finite(*columns: np.ndarray | None) -> np.ndarray:
    """The finite values of ``columns`` (those not None), as one flat array."""
    values = np.concatenate([c for c in columns if c is not None] or [np.zeros(0)])
    return values[np.isfinite(values)]


def curves_png(
    rows: Sequence[dict[str, float]],
    *,
    best_epoch: int | None = None,
    stopped_epoch: int | None = None,
    chosen_epoch: int | None = None,
    chosen_label: str = "early stopping's best epoch",
) -> bytes:
    """Loss, accuracy (train and validation, and the weight average's validation values with ``[ema]``) and
    learning rate per epoch, side by side.

    Vertical lines mark ``best_epoch`` (the checkpoint that was tested),
    ``stopped_epoch`` (where early stopping ended training) and ``chosen_epoch``
    (the epoch early stopping judged best, when it differs from ``best_epoch``). The loss axis is logarithmic
    where the losses span more than 1000x (a diverging run), as is the rate's where it spans more than 20x.
    """
    epochs = _column(rows, "epoch")
    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 3)
    panels = [
        (axes[0], "loss", [("train_loss", "train", TRAIN), ("val_loss", "validation", VAL),
                           ("ema_val_loss", "weight average, validation", EMA)], 1.0),
        (axes[1], "accuracy (%)", [("train_accuracy", "train", TRAIN), ("val_accuracy", "validation", VAL),
                                   ("ema_val_accuracy", "weight average, validation", EMA)], 100.0),
        (axes[2], "learning rate (end of epoch)", [("lr", "learning rate", LR)], 1.0),
    ]
    marker = "o" if epochs is not None and len(epochs) <= 30 else None
    for ax, title, series, scale in panels:
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        for key, label, color in series:
            values = _column(rows, key)
            if values is not None and epochs is not None:
                ax.plot(epochs, values * scale, marker=marker, ms=4, color=color, label=label,
                        ls="--" if color == EMA else "-")
        lines = [
            (best_epoch, BEST, "--", f"best.ckpt, tested (epoch {best_epoch})"),
            (stopped_epoch, STOP, ":", f"early stop (after epoch {stopped_epoch})"),
            (chosen_epoch if chosen_epoch != best_epoch else None, CHOSEN, "-.", f"{chosen_label} ({chosen_epoch})"),
        ]
        for epoch, color, style, label in lines:
            if epoch is not None:
                ax.axvline(epoch, color=color, ls=style, lw=1.5, label=label)
        if epochs is not None and len(epochs):
            lo, hi = float(np.nanmin(epochs)), float(np.nanmax(epochs))
            ax.set_xlim(lo - 0.5, hi + 0.5)
            if hi - lo < 12:
                ax.set_xticks(np.arange(lo, hi + 1))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    # A diverging run's losses (1e15 in epoch 1, 2e4 later) flattened every other value to a line at 0.
    losses = _finite(*(_column(rows, k) for k in ("train_loss", "val_loss", "ema_val_loss")))
    if len(losses) and losses.min() > 0 and losses.max() / losses.min() > 1000:
        axes[0].set_yscale("log")
    lr = _finite(_column(rows, "lr"))  # (np.nanmin of an all-NaN column printed a RuntimeWarning)
    if len(lr) and lr.min() > 0 and lr.max() / lr.min() > 20:
        axes[2].set_yscale("log")
    elif len(lr):
        axes[2].set_ylim(0, 1.15 * float(lr.max()) or 1.0)  # from 0, so a constant rate reads as one
    if epochs is None:
        for ax in axes:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def confusion_png(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """The confusion matrix with counts; colour is the fraction of the true class (square-root scale, so errors show)."""
    from matplotlib.colors import PowerNorm

    k = len(classes)
    cm = np.asarray(confusion, dtype=np.int64)
    totals = cm.sum(1, keepdims=True)
    frac = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)
    size = max(5.2, 0.45 * k + 1.7)  # 10 classes: 6.2 x 6.2 in, so that it fits beside the per-class chart
    fig = _figure(size, size)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1))
    fig.colorbar(im, ax=ax, shrink=0.7, label="fraction of the true class")
    ax.set_xticks(range(k), [plain(c) for c in classes], rotation=45 if max(map(len, classes), default=1) > 2 else 0,
                  ha="right" if max(map(len, classes), default=1) > 2 else "center")
    ax.set_yticks(range(k), [plain(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(cm.sum()):,} test images)")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.5 else "black")
    return _png(fig)


def per_class_png(accuracy: Sequence[float | None], classes: Sequence[str], overall: float | None = None) -> bytes:
    """Horizontal bars of the test accuracy of each class, worst highlighted, overall accuracy as a line."""
    acc = np.array([math.nan if a is None else float(a) for a in accuracy], dtype=np.float64) * 100
    k = len(classes)
    fig = _figure(5.6, max(3.5, 0.45 * k + 1.7))  # as tall as the confusion matrix beside it
    ax = fig.subplots()
    y = np.arange(k)
    finite = np.isfinite(acc)
    # the worst classes in red (all that share the lowest accuracy), unless all are equal
    low, high = (float(np.nanmin(acc)), float(np.nanmax(acc))) if finite.any() else (0.0, 0.0)
    worst = finite & (acc == low) & (low < high)
    red, blue = "#d62728", "#1f77b4"
    ax.barh(y, np.where(finite, acc, 0), color=[red if w else blue for w in worst])
    ax.set_yticks(y, [plain(c) for c in classes])
    ax.invert_yaxis()
    left = max(0.0, math.floor((low - 5) / 5) * 5)
    ax.set_xlim(left, 100.5)
    for i, a in enumerate(acc):
        if not math.isfinite(a):
            ax.text(left + 0.15, i, "no test images", va="center", fontsize=8)
        elif (a - left) / (100.5 - left) >= 0.15:  # the value inside the end of its bar
            ax.text(a - 0.15, i, f"{a:.2f}%", va="center", ha="right", fontsize=8, color="white")
        else:  # a short bar (0%: none) cannot hold "21.64%": white on white beyond the axis, it was not seen
            ax.annotate(f"{a:.2f}%", (max(a, left), i), xytext=(3, 0), textcoords="offset points", va="center",
                        ha="left", fontsize=8, color=red if worst[i] else "black")
    if overall is not None and math.isfinite(overall):  # (a NaN drew an "all classes nan%" line)
        ax.axvline(100 * overall, color="black", ls="--", lw=1, label=f"all classes {100 * overall:.2f}%")
        # below the axis: inside, at the lower left, it covered the last class's bar and its value
        ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1, -0.08), frameon=False)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("per-class test accuracy")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def misclassified_png(
    images: np.ndarray,
    labels: Sequence[int],
    predicted: Sequence[int],
    p_predicted: Sequence[float],
    p_true: Sequence[float],
    classes: Sequence[str],
    indices: Sequence[int],
    columns: int = 8,
) -> bytes:
    """A grid of test images, each titled with its index, true and predicted class and probabilities.

    A column is 1.6 inches wide (digits' titles fit), wider where a title needs it: Fashion-MNIST's
    "predicted T-shirt/top (97%)" overlapped its neighbours' titles and was cut at the edges. Each image
    is enlarged by a whole number of pixels per pixel, so its pixels stay square and sharp.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    n = len(images)
    # A model with 3 errors drew them at the left of 8 columns' width, the rest of the page blank.
    columns = min(columns, n) if n else columns
    rows = max(1, math.ceil(n / columns))
    # One picture of all the images (figimage) and the titles as figure text: an Axes per image, with the
    # ticks and spines each makes, cost 40 ms apiece, and laying 40 of them out took seconds.
    fig = _figure(1.6 * columns, ROW_INCHES * rows, layout=None)
    renderer = FigureCanvasAgg(fig).get_renderer()  # the one savefig draws with
    titles = [f"#{int(indices[i])}  true {plain(classes[int(labels[i])])} ({_p(p_true[i])})\n"
              f"predicted {plain(classes[int(predicted[i])])} ({_p(p_predicted[i])})" for i in range(n)]
    style = dict(fontsize=8.5, color="#b00020", linespacing=1.15, ha="center", va="bottom")
    if n == 0:
        fig.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        return _png(fig)
    # A title's size is in points, whatever the figure's: measured first, it sets the column's width (0.2 in
    # keeps neighbouring titles apart) and the room above each image.
    probe = fig.text(0, 0, "", **style)
    boxes = [probe.set_text(t) or probe.get_window_extent(renderer) for t in titles]
    probe.remove()
    width = round(DPI * max(1.6, max(b.width for b in boxes) / DPI + 0.2))  # in pixels, as all below
    height, pad = round(DPI * ROW_INCHES), round(DPI * TITLE_PAD_INCHES)
    title = math.ceil(max(b.height for b in boxes)) + pad
    room = min(width - 20, height - title - 15)  # 10 px above the title, 5 px below the image
    pictures = [_as_rgb(images[i]) for i in range(n)]
    h, w = pictures[0].shape[:2]
    scale = max(1, room // max(h, w))
    step = max(1, math.ceil(max(h, w) / room))  # an image larger than its room is thinned, not cut
    canvas = np.full((height * rows, width * columns, 3), 255, dtype=np.uint8)
    for i, picture in enumerate(pictures):
        big = picture[::step, ::step].repeat(scale, 0).repeat(scale, 1)
        row, col = divmod(i, columns)
        top, left = row * height + 10 + title, col * width + (width - big.shape[1]) // 2
        canvas[top : top + big.shape[0], left : left + big.shape[1]] = big
        fig.text((left + big.shape[1] / 2) / canvas.shape[1], 1 - (top - pad) / canvas.shape[0], titles[i], **style)
    fig.set_size_inches(canvas.shape[1] / DPI, canvas.shape[0] / DPI)
    fig.figimage(canvas, 0, 0, origin="upper")
    return _png(fig)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 as drawn: grayscale dark on white (matplotlib's gray_r), colour as it is."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        return np.repeat((255 - img.astype(np.uint8))[..., None], 3, axis=2)
    return np.ascontiguousarray(np.moveaxis(img, 0, -1).astype(np.uint8))


def _p(p: float) -> str:
    """A probability as a short percentage: 97%, <1%, >99%."""
    if not math.isfinite(p):
        return "?"
    if 0 < p < 0.01:
        return "<1%"
    return ">99%" if 0.99 < p < 1 else f"{100 * p:.0f}%"


def compare_png(points: Sequence[dict[str, Any]]) -> bytes:
    """Test accuracy against training seconds, one labelled point per run, the Pareto front joined.

    ``points``: dicts with ``label``, ``train_seconds`` and ``test_accuracy`` (a fraction), and
    optionally ``group`` (the dataset): each group has its own colour and front, since accuracies on
    different datasets do not compare. The front is the runs that no faster run of the group beats in
    accuracy: the ones worth their time.
    """
    pts = [p for p in points if p.get("train_seconds") and p.get("test_accuracy") is not None]
    fig = _figure(8, 5)
    ax = fig.subplots()
    if not pts:
        ax.text(0.5, 0.5, "no run has both a test accuracy and a training time", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    xs = np.array([float(p["train_seconds"]) for p in pts])
    ys = np.array([100 * float(p["test_accuracy"]) for p in pts])
    groups = group_fronts(pts)
    palette = [("#1f77b4", "#2a9d3a"), ("#d62728", "#ff7f0e"), ("#9467bd", "#8c564b"), ("#17becf", "#bcbd22")]
    for n, (group, (members, front)) in enumerate(groups.items()):
        dot, line = palette[n % len(palette)]
        named = f" on {group}" if len(groups) > 1 else ""
        ax.scatter(xs[members], ys[members], s=40, color=dot, zorder=3, label=group if named else None)
        fx, fy = zip(*sorted((xs[i], ys[i]) for i in front))
        ax.plot(fx, fy, color=line, ls="--", lw=1.2, zorder=2, label=f"best accuracy for the time{named} (Pareto front)")
    for x, y, p in zip(xs, ys, pts):
        ax.annotate(plain(p["label"]), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if xs.max() / max(xs.min(), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("test accuracy against training time")
    ax.grid(True, alpha=0.3)
    # Below the axes: inside, at the lower right, it hid the runs there (slow and inaccurate ones, and with three
    # datasets its six entries covered an MNIST run and its label).
    handles, labels = ax.get_legend_handles_labels()  # a group's dot, then its front: dots in one column
    order = list(range(0, len(handles), 2)) + list(range(1, len(handles), 2)) if len(groups) > 1 else [0]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="outside lower center",
               ncols=2 if len(groups) > 1 else 1, frameon=False)
    ax.margins(x=0.15, y=0.15)
    return _png(fig)


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], *,
                suggestion: float | None, lowest: float | None) -> bytes:
    """The learning-rate range test: each step's loss and its moving average against the rate (log scale).

    The loss axis stops a little above the first loss, so the climb at the end does not flatten the rest.
    """
    fig = _figure(8, 4.5)
    ax = fig.subplots()
    if not lrs:
        ax.text(0.5, 0.5, "no step finished", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    ax.plot(lrs, losses, color=TRAIN, alpha=0.3, lw=1, label="loss of each step")
    ax.plot(lrs, smoothed, color=TRAIN, lw=2, label="moving average")
    if suggestion is not None:
        ax.axvline(suggestion, color=BEST, ls="--", lw=1.5, label=f"steepest descent: {suggestion:.1e} (suggested)")
    if lowest is not None:
        ax.axvline(lowest, color=STOP, ls=":", lw=1.5, label=f"lowest average: {lowest:.1e}")
    ax.set_xscale("log")
    top = max(smoothed[0], losses[0]) * 1.25
    ax.set_ylim(max(0.0, min(min(losses), min(smoothed)) * 0.9), top if math.isfinite(top) and top > 0 else None)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


@contextlib.contextmanager
def _plot_file(path: Path) -> Iterator[None]:
    """Make the folder of ``path`` (a file the user chose with --plot); an OSError becomes one clear error."""
    from ..errors import MnistlabError

    try:
        if path.name in ("", "..") or path.is_dir():  # "", "." and "/" name no file
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, FileExistsError):  # mkdir met a file where a folder of the path belongs ("File exists")
            blocker = next((p for p in path.parents if p.is_file()), None)
            reason = f"{blocker} is a file, not a folder" if blocker is not None else reason
        raise MnistlabError(f"cannot write the plot {path}: {reason}; choose another with --plot FILE") from None


def check_plot_path(path: str | Path) -> Path:
    """Fail now if a plot cannot be written to ``path``, not after the work that draws it.

    The test makes the plot's missing folders and removes them again: a command that fails
    later leaves nothing behind, and :func:`save_png` makes them when the plot is written.
    """
    from ..errors import MnistlabError
    from ..folders import expand_home, missing_folders, remove_empty
    from .runfolder import is_run_folder

    if not os.fspath(path).strip():  # Path("") is ".": "cannot write the plot .: it is a folder"
        raise MnistlabError("--plot needs a file name (a PNG image), got an empty one")
    if os.fspath(path) == "-":  # stdout on most command lines; Path("./-") is "-" too, so asked before Path()
        raise MnistlabError("- is not a file name here: a plot is a PNG image and is not written to standard output; "
                            "give the file's name, e.g. plot.png (./- for a file named -)")
    path = expand_home(Path(path), "--plot", MnistlabError)  # --plot=~/x.png arrives unexpanded
    if path.parent.name == "plots" and is_run_folder(path.parent.parent):
        # the report's figure, or the one a later `mnistlab report` writes there (a --no-report run has none yet)
        raise MnistlabError(f"{path} is in the plots folder of the run in {path.parent.parent}, where its report "
                            "writes its figures: choose a file outside it with --plot FILE")
    if path.is_file():  # `--plot runs/a/summary.json` replaced the run's summary with a PNG
        if not _is_png(path):
            raise MnistlabError(f"{path} exists and is not a PNG image: a plot would replace it; choose another "
                                "file with --plot FILE")
        # A run writes no PNG of its own but its report's figures (refused above; a compare.png or lr_find.png
        # beside its files is the user's, as when the command runs inside the run folder).
    if path.suffix and path.suffix.lower() != ".png":  # `--plot curve.jpg` wrote PNG bytes under a JPEG's name
        raise MnistlabError(f"{path}: a plot is written as a PNG image; give a file name ending in .png")
    missing = missing_folders(path.parent)
    try:
        with _plot_file(path):
            with tempfile.TemporaryFile(dir=path.parent):  # creating a file there is the one sure test
                pass
    finally:
        remove_empty(missing)
    return path


def _is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def save_png(png: bytes, path: str | Path) -> Path:
    """Write ``png`` to ``path`` atomically, making its folder."""
    from ..training.checkpoint import atomic_write

    path = Path(path)
    with _plot_file(path):
        atomic_write(path, lambda f: f.write(png))
    return path


def group_fronts(points: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[int]]]:
    """Per ``group`` of ``points`` (dicts with ``train_seconds``, ``test_accuracy`` and ``group``): the indices
    of its points, and of those on its own Pareto front.

    >>> group_fronts([{"train_seconds": 1, "test_accuracy": 0.5, "group": "mnist"},
    ...               {"train_seconds": 2, "test_accuracy": 0.9, "group": "mnist"},
    ...               {"train_seconds": 3, "test_accuracy": 0.8, "group": "kmnist"}])
    {'kmnist': ([2], [2]), 'mnist': ([0, 1], [0, 1])}
    """
    out = {}
    for group in sorted({str(p.get("group", "")) for p in points}):
        members = [i for i, p in enumerate(points) if str(p.get("group", "")) == group]
        front = pareto_front([(float(points[i]["train_seconds"]), float(points[i]["test_accuracy"])) for i in members])
        out[group] = (members, [members[j] for j in front])
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (time, accuracy) that no other point beats: faster-or-equal and more accurate.

    >>> pareto_front([(1, 90), (2, 95), (3, 93), (4, 99)])
    [0, 1, 3]
    """
    front = []
    for i, (t, a) in enumerate(points):
        beaten = any(
            (t2 <= t and a2 >= a) and (t2 < t or a2 > a) for j, (t2, a2) in enumerate(points) if j != i
        )
        if not beaten:
            front.append(i)
    return front


__all__ = ["curves_png", "confusion_png", "per_class_png", "misclassified_png", "compare_png", "lr_find_png",
           "pareto_front", "check_plot_path", "save_png"]
