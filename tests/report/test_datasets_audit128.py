"""What differs by dataset (MNIST, Fashion-MNIST, KMNIST) in the report's figures and in predict's preprocessing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mnistlab.predict import preprocess, read_grayscale
from mnistlab.report import plots


def _drawn(monkeypatch):
    """The figures the plots module draws, kept (laid out) as they are turned into PNG bytes."""
    figures = []
    real = plots._png

    def keep(fig):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)  # the canvas savefig draws on, kept: its renderer measures the drawn figure
        png = real(fig)  # draws it: the layout and the legend's place are final
        figures.append(fig)
        return png

    monkeypatch.setattr(plots, "_png", keep)
    return figures


def test_compare_legend_leaves_every_run_visible(monkeypatch):
    # Runs on three datasets: the legend (six entries) was drawn inside the axes at the lower right, over the
    # slow, inaccurate MNIST run and its label.
    figures = _drawn(monkeypatch)
    points = [{"label": "fashion (cnn)", "train_seconds": 0.39, "test_accuracy": 0.53, "group": "fashion-mnist"},
              {"label": "kmnist (cnn)", "train_seconds": 0.69, "test_accuracy": 0.53, "group": "kmnist"},
              {"label": "mnist (cnn)", "train_seconds": 0.57, "test_accuracy": 0.23, "group": "mnist"}]
    plots.compare_png(points)
    fig = figures[-1]
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    legends = fig.legends + [ax.get_legend()] * (ax.get_legend() is not None)
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    dots = np.concatenate([c.get_offsets() for c in ax.collections])
    for x, y in ax.transData.transform(dots):
        assert not box.contains(x, y), (x, y, box)
    for label in ax.texts:  # the runs' names beside them
        assert not box.overlaps(label.get_window_extent(renderer)), label.get_text()
    # each row of the legend is one dataset: its colour, then its front
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert texts[:3] == ["fashion-mnist", "kmnist", "mnist"] and all("Pareto front" in t for t in texts[3:])


def test_a_fashion_mnist_image_read_back_from_png_is_the_image_itself(tmp_path):
    # Fashion-MNIST's pixels are the photo's negated grey levels (Xiao et al. 2017), not stretched: predict
    # stretched the brightest pixel to 255, so a dim garment (a light-grey one on white) came out as bright as a
    # black one, and a Fashion-MNIST image written out as PNG was not the image the model was tested on.
    garment = np.zeros((28, 28), dtype=np.uint8)
    rows = np.arange(28)[:, None]
    garment[:, 8:20] = (90 + 2 * rows + np.arange(12)[None, :]).astype(np.uint8)  # trousers: top to bottom, centred
    Image.fromarray(garment).save(tmp_path / "trousers.png")
    out = preprocess(read_grayscale(tmp_path / "trousers.png"), "fashion-mnist")
    assert int(out.max()) == int(garment.max()) == 155
    np.testing.assert_array_equal(out, garment)
    # a photo: a light-grey shirt on white paper stays dim, a black one is bright, as the dataset has them
    for tone, level in ((0.7, 77), (0.0, 255)):
        photo = np.ones((120, 90), dtype=np.float32)
        photo[10:110, 20:70] = tone
        assert abs(int(preprocess(photo, "fashion-mnist").max()) - level) <= 1, tone
        assert int(preprocess(photo, "mnist").max()) == 255  # digits are stretched, as MNIST's anti-aliasing made them
