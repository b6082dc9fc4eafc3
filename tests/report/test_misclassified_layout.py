"""plots/misclassified.png: every title readable, whatever the dataset's class names."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mnistlab.data.datasets import DATASETS
from mnistlab.report import plots


def drawn_figure(monkeypatch, classes):
    """The figure of misclassified_png for 16 images, as saved (laid out)."""
    saved, png = [], plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: saved.append(fig) or png(fig))
    n = 16
    labels, predicted = [9, 0, 6, 2, 4, 7, 8, 1] * 2, [0, 9, 0, 6, 2, 5, 3, 4] * 2
    plots.misclassified_png(np.zeros((n, 1, 28, 28), dtype=np.uint8), labels, predicted, [0.97] * n, [0.02] * n,
                            classes, list(range(6166, 6166 + n)))
    (fig,) = saved
    return fig


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_titles_stay_inside_the_figure_and_clear_of_each_other(monkeypatch, dataset):
    # With Fashion-MNIST's names ("#6166  true Ankle boot (2%)" over "predicted T-shirt/top (97%)") the titles
    # of neighbouring images overlapped, and those of the outer columns were cut at the figure's edges.
    fig = drawn_figure(monkeypatch, DATASETS[dataset].classes)
    renderer = FigureCanvasAgg(fig).get_renderer()
    width = fig.bbox.width
    for row in (fig.axes[:8], fig.axes[8:]):
        boxes = [ax.title.get_window_extent(renderer) for ax in row]
        assert boxes[0].x0 >= 0 and boxes[-1].x1 <= width
        assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))
    if dataset == "mnist":  # the digits' titles fitted: their figure is as it was
        assert tuple(fig.get_size_inches()) == (1.6 * 8, 1.8 * 2)
