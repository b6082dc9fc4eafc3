"""The report's figures read true and readable at the edges: short bars, few errors, diverging losses."""

from __future__ import annotations

import math
import struct
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mnistlab.report import plots

DIGITS = [str(d) for d in range(10)]
# The per-class test accuracies of a real run that diverged (--lr 1e4): four classes never predicted.
DIVERGED = [0.1867, 1.0, 0.1124, 0.0, 0.2933, 0.0359, 0.2672, 0.0, 0.0, 0.0]


def drawn(monkeypatch, draw):
    """The figure ``draw()`` saved, and its PNG."""
    saved, png = [], plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: saved.append(fig) or png(fig))
    data = draw()
    (fig,) = saved
    return fig, data


def row(text):
    """The bar a value is written at: an annotation's point, else the text's own position."""
    return text.xy[1] if hasattr(text, "xy") else text.get_position()[1]


def test_every_class_value_is_readable_even_for_short_and_empty_bars(monkeypatch):
    # Each value was drawn in white inside the end of its bar: a class at 0% (or 21.64% on an axis from 15%) had
    # it white on white, left of the axis, and the legend at the lower left covered the last class's bar.
    fig, _ = drawn(monkeypatch, lambda: plots.per_class_png(DIVERGED, DIGITS, overall=0.201))
    (ax,) = fig.axes
    renderer = FigureCanvasAgg(fig).get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [b.get_window_extent(renderer) for b in ax.patches]
    for i, a in enumerate(DIVERGED):
        (text,) = [t for t in ax.texts if t.get_text() == f"{100 * a:.2f}%" and row(t) == i]
        box = text.get_window_extent(renderer)
        assert ax.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1, (a, box)
        if text.get_color() == "white":  # only on its own bar, which holds it whole
            assert bars[i].x0 <= box.x0 and box.x1 <= bars[i].x1, (a, box, bars[i])
        assert not box.overlaps(legend), a
    # every class at the lowest accuracy is marked as the worst, not just the first (a 0% bar has no width)
    zero = [t for t in ax.texts if t.get_text() == "0.00%"]
    assert len(zero) == 4 and all(t.get_color() == "#d62728" for t in zero)


def test_an_overall_accuracy_that_is_not_a_number_draws_no_line(monkeypatch):
    fig, _ = drawn(monkeypatch, lambda: plots.per_class_png([0.5] * 10, DIGITS, overall=math.nan))
    (ax,) = fig.axes
    assert ax.get_legend() is None and not ax.get_lines()  # it said "all classes nan%"


def test_a_few_misclassified_images_make_a_grid_as_wide_as_they_need():
    # 3 images were drawn at the left of an 8 columns' wide figure (12.8 in), the rest blank.
    images = np.zeros((3, 1, 28, 28), dtype=np.uint8)
    png = plots.misclassified_png(images, [0, 1, 2], [1, 2, 3], [0.9] * 3, [0.05] * 3, DIGITS, [4, 5, 6])
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (3 * 160, 180)  # three digits' columns of 1.6 in, one row of 1.8 in


def test_diverging_losses_are_drawn_on_a_log_scale_and_healthy_ones_are_not(monkeypatch):
    # A real diverged run's metrics.csv (--lr 1e4): on a linear axis every loss but the first read as 0.
    diverged = [dict(epoch=1, train_loss=6.8e15, val_loss=3.9e12, train_accuracy=0.14, val_accuracy=0.186, lr=1e4),
                dict(epoch=2, train_loss=7.1e11, val_loss=28600.0, train_accuracy=0.142, val_accuracy=0.096, lr=1e4),
                dict(epoch=3, train_loss=32058.0, val_loss=23054.0, train_accuracy=0.075, val_accuracy=0.096, lr=1e4)]
    fig, _ = drawn(monkeypatch, lambda: plots.curves_png(diverged, best_epoch=1))
    assert fig.axes[0].get_yscale() == "log"
    healthy = [dict(epoch=e, train_loss=2.3 / e ** 2, val_loss=2.0 / e, lr=0.01) for e in range(1, 11)]
    fig, _ = drawn(monkeypatch, lambda: plots.curves_png(healthy, best_epoch=10))
    assert fig.axes[0].get_yscale() == "linear"


def test_a_learning_rate_column_without_a_number_warns_nothing():
    rows = [dict(epoch=1, train_loss=math.nan, val_loss=math.nan, lr=math.nan)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice encountered" reached the user's terminal
        assert plots.curves_png(rows).startswith(b"\x89PNG")


def test_figures_leave_no_pyplot_figure_open():
    # A guard: figures are matplotlib.figure.Figure objects, never pyplot's, so many reports in one process
    # (a sweep, a notebook) keep none of them alive.
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    for _ in range(3):
        plots.curves_png([dict(epoch=1, train_loss=1.0, val_loss=1.0, lr=0.1)], best_epoch=1)
        plots.confusion_png(np.eye(10, dtype=np.int64), DIGITS)
        plots.per_class_png([1.0] * 10, DIGITS, 1.0)
    assert plt.get_fignums() == before
