"""A small trained MNIST model for the predict tests, and digits drawn by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from PIL import Image, ImageDraw, ImageFont

# A font that is everywhere matplotlib is (the system's fonts differ between machines).
FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"

# Ways a user's image may come: each digit is drawn in each of these.
VARIANTS = {
    # large, dark on white paper, off-centre on a wide canvas
    "paper.png": dict(size=300, canvas=(520, 420), pos=(180, 30), ink=0, paper=255, mode="L"),
    # small, light on black, as MNIST itself, BMP
    "night.bmp": dict(size=40, canvas=(64, 80), pos=(20, 12), ink=255, paper=0, mode="L"),
    # a "photo": blue ink on cream paper, far off-centre, JPEG (noisy background)
    "photo.jpg": dict(size=150, canvas=(640, 480), pos=(420, 260), ink=(20, 30, 160), paper=(250, 245, 230), mode="RGB"),
    # black ink on a transparent canvas
    "clear.png": dict(size=120, canvas=(200, 200), pos=(60, 30), ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA"),
}


def draw_digit(digit: int, *, size: int, canvas, pos, ink, paper, mode: str) -> Image.Image:
    """``digit`` in DejaVu Sans Bold; a 1 is drawn as one slanted stroke.

    A typeset 1 has a flag and a foot that handwritten MNIST 1s lack (a small
    model reads DejaVu's as a 2), so it is drawn the way people write it.
    """
    img = Image.new(mode, canvas, paper)
    draw = ImageDraw.Draw(img)
    if digit == 1:
        x, y = pos
        draw.line([(x + size * 0.3, y + size * 0.15), (x + size * 0.22, y + size * 0.9)], fill=ink, width=max(2, size // 8))
    else:
        draw.text(pos, str(digit), fill=ink, font=ImageFont.truetype(str(FONT), size))
    return img


@pytest.fixture(scope="session")
def drawn_digits(tmp_path_factory) -> dict[tuple[int, str], Path]:
    """``(digit, variant) -> file`` for the ten digits in every variant."""
    folder = tmp_path_factory.mktemp("drawn")
    files = {}
    for digit in range(10):
        for name, spec in VARIANTS.items():
            path = folder / f"{digit}-{name}"
            img = draw_digit(digit, **spec)
            img.save(path, quality=75) if name.endswith(".jpg") else img.save(path)
            files[digit, name] = path
    return files


@pytest.fixture(scope="session")
def digit_run(mnist_root, tmp_path_factory) -> Path:
    """A run folder of the default model trained on 4,000 real MNIST images for 2 epochs (95% on the test set)."""
    from mnistlab.config import Config, apply_overrides
    from mnistlab.training.run import train

    cfg = apply_overrides(Config(), {
        "data.dir": str(mnist_root), "data.download": False, "data.train_limit": 4000, "data.val_size": 500,
        "train.epochs": 2, "train.threads": 1, "train.progress": False, "tensorboard.enabled": False,
    })
    out = tmp_path_factory.mktemp("digit-run") / "run"
    train(cfg, out=out, quiet=True, report=False)  # its tests read the checkpoints and summary.json, not report.html
    return out


@pytest.fixture(scope="session")
def digit_model(digit_run):
    from mnistlab.training.checkpoint import load_model

    return load_model(digit_run)
