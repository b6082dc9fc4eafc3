"""plots/misclassified.png: every title readable, whatever the dataset's class names."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from mnistlab.data.datasets import DATASETS
from mnistlab.report import plots


def drawn_figure(monkeypatch, classes):
    """The figure of misclassified_png for 16 black images, as saved."""
    saved, png = [], plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: saved.append(fig) or png(fig))
    n = 16
    labels, predicted = [9, 0, 6, 2, 4, 7, 8, 1] * 2, [0, 9, 0, 6, 2, 5, 3, 4] * 2
    plots.misclassified_png(np.full((n, 1, 28, 28), 255, dtype=np.uint8), labels, predicted, [0.97] * n, [0.02] * n,
                            classes, list(range(6166, 6166 + n)))
    (fig,) = saved
    return fig


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_titles_stay_inside_the_figure_and_clear_of_each_other_and_of_the_images(monkeypatch, dataset):
    # With Fashion-MNIST's names ("#6166  true Ankle boot (2%)" over "predicted T-shirt/top (97%)") the titles
    # of neighbouring images overlapped, and those of the outer columns were cut at the figure's edges.
    fig = drawn_figure(monkeypatch, DATASETS[dataset].classes)
    renderer = FigureCanvasAgg(fig).get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    canvas = fig.images[0].get_array()
    assert canvas.shape[:2] == (height, width)  # one pixel of the picture per pixel of the PNG: nothing resampled
    dark = np.flatnonzero((canvas < 128).all(axis=2).any(axis=1))  # the rows of pixels with image in them
    tops = [dark[0], dark[np.flatnonzero(np.diff(dark) > 1)[0] + 1]]  # each grid row's first such pixel row
    bottoms = [dark[np.flatnonzero(np.diff(dark) > 1)[0]], dark[-1]]
    assert len(fig.texts) == 16
    for r, row in enumerate((fig.texts[:8], fig.texts[8:])):
        boxes = [t.get_window_extent(renderer) for t in row]
        assert boxes[0].x0 >= 0 and boxes[-1].x1 <= width
        assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))
        for box in boxes:  # above its own image (y counts up from the bottom), below the row above's
            assert box.y0 > height - tops[r] and (r == 0 and box.y1 <= height or box.y1 < height - bottoms[r - 1])
    if dataset == "mnist":  # the digits' titles fitted: their figure is as it was
        assert tuple(fig.get_size_inches()) == (1.6 * 8, 1.8 * 2)


def test_images_keep_square_sharp_pixels_and_colour(monkeypatch):
    saved, png = [], plots._png
    monkeypatch.setattr(plots, "_png", lambda fig: saved.append(fig) or png(fig))
    gray = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    gray[0, 0, 3, 5] = 255  # one black pixel on white (gray_r), drawn as a square block
    colour = np.zeros((1, 3, 28, 28), dtype=np.uint8)
    colour[0, 0] = 200  # red
    for images in (gray, colour):
        plots.misclassified_png(images, [0] * len(images), [1] * len(images), [0.9] * len(images),
                                [0.1] * len(images), [str(c) for c in range(10)], range(len(images)))
    canvas = saved[0].images[0].get_array()
    ys, xs = np.nonzero((canvas == 0).all(axis=2))
    assert len(ys) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a filled block
    assert ys.max() - ys.min() == xs.max() - xs.min() >= 3  # square, 4 or more screen pixels a side
    assert ((saved[1].images[0].get_array() == (200, 0, 0)).all(axis=2)).sum() > 28 * 28
