"""`mnistlab predict` on photos lit unevenly and on drawings made with a see-through brush."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from mnistlab.predict import predict_files, preprocess, read_grayscale

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"


def paper_photo(digit: int, light: str) -> np.ndarray:
    """A 640x480 photo of a digit in dark ink on paper, lit evenly, from the left (60% to 100% across) or darker
    in the corners (55% there)."""
    img = Image.new("L", (640, 480), 245)
    ImageDraw.Draw(img).text((220, 80), str(digit), fill=35, font=ImageFont.truetype(str(FONT), 280))
    scene = np.asarray(img, dtype=np.float64) / 255
    yy, xx = np.mgrid[:480, :640]
    lighting = {
        "even": np.ones_like(scene),
        "side": 0.6 + 0.4 * xx / 639,
        "vignette": 1 - 0.45 * ((yy - 240) ** 2 + (xx - 320) ** 2) / (240**2 + 320**2),
    }[light]
    return scene * lighting  # the light multiplies what the paper and the ink reflect


@pytest.mark.parametrize("light", ["side", "vignette"])
def test_a_photo_lit_unevenly_gives_the_input_of_one_lit_evenly(light):
    """The dim side of the paper was taken for faint ink: the crop took it in, and the digit shrank beside a grey
    ramp (in the corners of a vignette, a 4 came out 15 pixels tall, not 20; lit from one side, 57 grey levels
    off on average)."""
    want, got = preprocess(paper_photo(4, "even")), preprocess(paper_photo(4, light))
    rows = np.flatnonzero(got.any(1))
    assert rows[-1] - rows[0] + 1 == 20  # MNIST's box, not a digit in a corner of it
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3  # grey levels


def test_evenly_lit_paper_and_mnist_images_are_left_as_they_were(mnist_small):
    """The lighting is evened out only where the border shows a trend: a clean image keeps its exact input."""
    from mnistlab.predict import _even_lighting

    for img in mnist_small.test.images[:300, 0].numpy():
        g = img.astype(np.float64) / 255
        assert _even_lighting(g, 0.0, False)[0] is g
    photo = paper_photo(7, "even") + np.random.default_rng(0).normal(0, 0.02, (480, 640))
    g = 1 - photo
    assert _even_lighting(g, float(np.median(g[0])), True)[0] is g


@pytest.mark.parametrize("paper", [(255, 255, 255, 0), (0, 0, 0, 0)])
def test_light_ink_of_a_see_through_brush_on_a_clear_canvas_is_read(tmp_path, paper):
    """White ink at 40% opacity, no pixel half opaque: it was taken for dark ink, given a white background and
    called blank."""
    img = Image.new("RGBA", (200, 200), paper)
    ImageDraw.Draw(img).text((40, 20), "7", fill=(255, 255, 255, 100), font=ImageFont.truetype(str(FONT), 120))
    img.save(tmp_path / "soft.png")
    solid = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(solid).text((40, 20), "7", fill=255, font=ImageFont.truetype(str(FONT), 120))
    solid.save(tmp_path / "solid.png")
    soft, solid = (preprocess(read_grayscale(tmp_path / f"{name}.png")).astype(int) for name in ("soft", "solid"))
    assert np.abs(soft - solid).max() <= 1  # grey levels: its anti-aliased edge is rounded to 8 bits twice


def test_a_sidelit_photo_is_classified_as_the_evenly_lit_one(digit_model, tmp_path):
    """End to end, as a user's phone photo: the file, read, preprocessed and classified."""
    files = []
    for light in ("even", "side"):
        Image.fromarray(np.round(paper_photo(3, light) * 255).astype(np.uint8)).save(tmp_path / f"{light}.jpg",
                                                                                    quality=90)
        files.append(tmp_path / f"{light}.jpg")
    even, side = predict_files(digit_model, files)
    assert side.index == even.index == 3
    assert np.abs(side.image.numpy() - even.image.numpy()).mean() < 10 / 255  # JPEG's artefacts differ
