"""Images whose transparency is a colour key (PNG's tRNS chunk in a grayscale or RGB file), not an alpha channel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlab.predict import preprocess, read_grayscale


@pytest.mark.parametrize("mode, key, ink, edge", [("RGB", (0, 0, 0), (50, 50, 50), (230, 230, 230)),
                                                  ("L", 0, 50, 230)])
def test_a_colour_keyed_canvas_is_transparent_like_an_alpha_one(tmp_path, mode, key, ink, edge):
    # A dark stroke with wide light edges on a canvas whose black is keyed transparent (what a viewer shows on
    # white). Read as opaque, the black canvas made the light edges the ink and the stroke a hole in an outline,
    # as a palette image with a transparent index did before its transparency was applied.
    img = Image.new(mode, (60, 60), key)
    ImageDraw.Draw(img).rectangle([18, 8, 38, 52], fill=edge)
    ImageDraw.Draw(img).rectangle([22, 12, 34, 48], fill=ink)
    img.save(tmp_path / "keyed.png", transparency=key)
    assert Image.open(tmp_path / "keyed.png").info.get("transparency") == key  # the file holds a tRNS key
    g = read_grayscale(tmp_path / "keyed.png")
    assert g[0, 0] == 1.0 and g[30, 28] == pytest.approx(50 / 255, abs=0.01)
    out = preprocess(g)
    assert out[14, 14] > 200  # the stroke's middle is ink, not a hole


def test_an_image_without_a_key_is_read_as_it_is(tmp_path):
    img = Image.new("RGB", (60, 60), (0, 0, 0))
    ImageDraw.Draw(img).rectangle([22, 12, 34, 48], fill=(200, 200, 200))
    img.save(tmp_path / "plain.png")
    g = read_grayscale(tmp_path / "plain.png")
    assert g[0, 0] == 0.0 and np.isclose(g[30, 28], 200 / 255)
