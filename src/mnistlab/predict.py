"""Classify the user's own images with a trained model: ``mnistlab predict``.

A photo or a drawing is turned into the kind of image the model was trained on
the way MNIST itself was made (LeCun, Cortes and Burges): the digit, light on a
dark background, is scaled to fit a 20x20 box keeping its aspect ratio
(anti-aliased, so it gains grey levels) and placed in a 28x28 field so that its
centre of mass is at the centre. :func:`preprocess` does that, plus what a
user's file needs first:

1. read it (PNG, JPEG, BMP, a GIF's first frame, ... up to ``MAX_PIXELS``;
   RGB, RGBA, palette, 16- or 32-bit or grayscale (a 16-bit file's depth read
   from its maximum: a 12-bit scan's 4095 is white); the EXIF orientation of a
   phone photo is applied), flatten any transparency (onto the paper's own
   colour where the image is mostly opaque, else onto a background that
   contrasts with the ink), convert to grayscale in [0, 1];
2. invert it when the ink is darker than the background (a digit on paper,
   also on dim grey paper): the background is the median of the border
   pixels, and the ink the extreme, darkest or lightest, furthest from it;
3. even out the lighting where the border shows a trend (a photo lit from one side, darker corners; see
   ``_even_lighting``), subtract the background level and stretch so the strongest ink is 1 (for
   Fashion-MNIST: so that black is 1, see below);
4. crop to the ink: on a clean background every pixel that is not background,
   on a noisy one (a photo) the clear ink plus its faint edge (see ``_ink_box``);
5. resize so the longer side is ``box`` pixels (20 for MNIST), bilinear with
   anti-aliasing;
6. paste into the 28x28 field, shifted by whole pixels so the centre of mass
   lands on pixel (14, 14) -- measured on the MNIST training set, whose centres
   of mass have mean (14.00, 14.01) and the spread (0.29) of a rounding to whole
   pixels (the test set's alike) -- and moved back inside when a lopsided digit
   would stick out;
7. round to 8 bits (as MNIST is stored) and scale to [0, 1]; the model applies
   its own mean/std normalization in ``forward``.

Measured on the 10,000 MNIST test images written out as 28x28 PNGs: 8,977 come
out of these steps identical to the original; 1,020 differ by at most one grey
level (their brightest pixel is 254, which step 3 stretches to 255); 3, whose
ink is only 19 pixels tall, are enlarged to 20. The tests check that the
model's predictions from such PNGs match those from the tensors.

Fashion-MNIST was made differently (Xiao et al. 2017: trim, resize the longer
side to 28, centre the box, negate the grey levels), so for a Fashion-MNIST model
the box is 28, the bounding box, not the centre of mass, is centred, and the
contrast is not stretched: each pixel is its darkness relative to the paper (a
light-grey shirt stays dim, as in the dataset). KMNIST follows MNIST's format.

>>> model = load_model("runs/my-run")                            # doctest: +SKIP
>>> [p.name for p in predict_files(model, ["seven.png"])]        # doctest: +SKIP
['7']
"""

from __future__ import annotations

import itertools
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CheckpointError, MnistlabError
from .folders import expand_home
from .training.evaluate import predict_logits

MAX_PIXELS = 50_000_000  # refuse larger images before decoding them (a 50 MP photo is ~150 MB of RGB)
INK_THRESHOLD = 0.2  # ink level (0..1, after stretching) that surely is ink, not noise; the crop starts from it
FRINGE = 2  # pixels of faint edge the crop may add on each side (a 28x28 MNIST digit has 1-2)
SPECK_SHARE = 0.001  # on a noisy background, lines at the crop's ends holding no more of the clear ink are left out
FIELD = 28  # output size in pixels
LIGHTING_TREND = 0.05  # a background varying by more than this share of the ink's contrast is evened out


class ImageFileError(MnistlabError):
    """One input file cannot be used (not an image, empty, too large, blank)."""


@dataclass(frozen=True)
class Recipe:
    """How one dataset's images were made: the box the object is scaled into, how it is centred, and whether its
    strongest ink is stretched to white."""

    box: int  # longer side of the object, in pixels
    centre: str  # "mass": centre of mass on the field's centre; "box": bounding box centred
    # True: the strongest ink is 1 (255), as in MNIST's anti-aliased digits. False: each pixel keeps its darkness
    # relative to the paper (Fashion-MNIST negated the photo's grey levels: a light-grey shirt is dim there).
    stretch: bool = True


RECIPES = {
    "mnist": Recipe(box=20, centre="mass"),
    "kmnist": Recipe(box=20, centre="mass"),  # Clanuwat et al. 2018 made KMNIST in MNIST's format
    # Xiao et al. 2017: trim, longer side to 28, centred, negated, 8-bit grayscale (no contrast stretch)
    "fashion-mnist": Recipe(box=28, centre="box", stretch=False),
}


@dataclass
class Prediction:
    file: str
    image: torch.Tensor | None = None  # the 1 x 28 x 28 float input the model saw
    probabilities: torch.Tensor | None = None  # softmax over all classes
    error: str | None = None
    saved_as: str | None = None  # path of the --save-preprocessed PNG
    top_k: list[dict[str, Any]] = field(default_factory=list)

    @property
    def index(self) -> int:
        """The predicted class; a ValueError for a file that could not be read (``error`` says why)."""
        return int(self._best()["class"])

    @property
    def name(self) -> str:
        """The predicted class's name; a ValueError for a file that could not be read."""
        return str(self._best()["name"])

    def _best(self) -> dict[str, Any]:
        if not self.top_k:  # a bare IndexError said nothing of the file
            raise ValueError(f"{self.file} has no prediction: {self.error or 'it was not classified'}")
        return self.top_k[0]

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        out = {"file": self.file, "class": self.index, "name": self.name, "top_k": self.top_k}
        if self.saved_as:
            out["preprocessed"] = self.saved_as
        return out


# ---------------------------------------------------------------------------
# reading


def read_grayscale(path: str | Path) -> np.ndarray:
    """The image in ``path`` as a float32 H x W array in [0, 1] (0 = black).

    Every problem is an :class:`ImageFileError` that names the file and says what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageFileError(f"{path} is a folder, not an image file: give the image files in it ({path / '*.png'})")
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():  # "does not exist" was all it said of a link whose target had gone
            raise ImageFileError(f"{path} is a link to {os.readlink(path)}, which does not exist") from None
        stdin = " (predict reads image files, not standard input)" if str(path) == "-" else ""
        raise ImageFileError(f"{path} does not exist{stdin}") from None
    except OSError as e:
        raise ImageFileError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):  # a pipe (<(cat seven.png)) has no size: it was called "empty (0 bytes)"
        raise ImageFileError(f"{path} is not a regular file (a pipe, a device or a socket): predict reads image "
                             "files; save the image to a file first")
    size = info.st_size
    if size == 0:
        raise ImageFileError(f"{path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 megapixels; the size check below refuses from MAX_PIXELS on, with our numbers.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size  # read from the header: nothing is decoded yet
                if w == 0 or h == 0:
                    raise ImageFileError(f"{path} is a {w}x{h} image: it has no pixels")
                if w * h > MAX_PIXELS:
                    raise ImageFileError(
                        f"{path} is {w}x{h} = {_megapixels(w * h)} megapixels, more than the {MAX_PIXELS / 1e6:.0f} "
                        "megapixels mnistlab reads; scale it down first"
                    )
                if img.format == "EPS" and not _has_ghostscript():  # its load failed with "Unable to locate Ghostscript"
                    raise ImageFileError(f"{path} is an EPS (PostScript) file, which Pillow draws with Ghostscript, and "
                                         "Ghostscript (gs) is not installed; install it, or save the image as PNG")
                img.load()
                return _to_gray(_upright(img, path), path)
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError(
            f"{path} is not an image Pillow can read: not an image file, or one with a damaged header "
            "(e.g. a zero width or height); use PNG, JPEG, BMP, GIF or TIFF"
        ) from None
    except Image.DecompressionBombError:  # Pillow refuses twice its limit before the header's size is ours to see
        raise ImageFileError(
            f"{path} is more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels, more than the "
            f"{MAX_PIXELS / 1e6:.0f} megapixels mnistlab reads; scale it down first"
        ) from None
    except PermissionError as e:
        raise ImageFileError(f"cannot read {path}: {e.strerror or e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise ImageFileError(f"{path} is a damaged or truncated image ({e})") from None


def _has_ghostscript() -> bool:
    from PIL import EpsImagePlugin

    return EpsImagePlugin.has_ghostscript()


def _megapixels(pixels: int) -> str:
    """
    >>> _megapixels(60_000_000), _megapixels(8001 * 6250)   # not "50 megapixels, more than the 50"
    ('60', '50.01')
    """
    return f"{pixels / 1e6:.2f}".rstrip("0").rstrip(".")


# EXIF orientation (tag 0x0112) -> the transpose that makes the image upright, as ImageOps.exif_transpose does.
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}


def _upright(img: Image.Image, path: Path) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone photo held sideways).

    Only the orientation tag is read: ``ImageOps.exif_transpose`` also rewrites
    the rest of the EXIF block, and one malformed tag there raised out of it.
    """
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 - Pillow's EXIF parser raises many kinds (struct.error, ...)
        raise ImageFileError(f"{path} has damaged EXIF metadata ({type(e).__name__}: {e}); save the image again "
                             "without it") from None
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(method) if method is not None else img


def _to_gray(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit (or 32-bit integer) grayscale
        a = np.asarray(img, dtype=np.float64)
        top = float(a.max())
        if a.min() < 0:  # signed values have no fixed range: their own span is black to white (0 is not black)
            return _span(a)
        # White is the largest value of the fewest bits that hold the maximum, 8 at least: 8-bit values in a
        # wider type, and the 10, 12 or 14 of a camera's or scanner's 16-bit file (a 12-bit image over 65535 was
        # at most 6% grey, and called blank); 32-bit ones have no fixed range (their maximum is white).
        white = 2.0 ** max(8, int(top).bit_length()) - 1 if top <= 65535 else top
        return np.clip(a / white, 0, 1).astype(np.float32)
    if img.mode == "F":  # float grayscale: no fixed range, so its own span is black to white
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ImageFileError(f"{path} has NaN or infinite pixel values (a float image); save it with finite ones")
        # (dividing by the maximum clipped negative values to black, and called a tiny range blank)
        return _span(a)
    return _composited(img, path)


def _span(a: np.ndarray) -> np.ndarray:
    """Values from their minimum (black) to their maximum (white); all equal: all black (a blank image)."""
    low, high = float(a.min()), float(a.max())
    return ((a - low) / (high - low) if high > low else np.zeros_like(a)).astype(np.float32)


def _composited(img: Image.Image, path: Path) -> np.ndarray:
    """A colour or grayscale image as gray in [0, 1]; transparent parts filled as the image suggests."""
    # "transparency": a palette's transparent index, or the colour key (PNG's tRNS) of a grayscale or RGB file
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    try:
        if not has_alpha:
            return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
    except ValueError as e:  # a colour mode Pillow cannot convert (LAB)
        raise ImageFileError(f"{path} is a {img.mode} image, which Pillow cannot turn into grayscale ({e}); "
                             "save it as RGB or grayscale") from None
    gray, alpha = la[..., 0], la[..., 1]
    if alpha.min() == 1.0:
        return gray
    # The opaque pixels; where none is half opaque (a brush at 40% opacity), the most opaque ones: with none,
    # light ink was taken for dark, got a light background, and the image was called blank.
    opaque = gray[alpha >= min(0.5, float(alpha.max()))]
    tone = float(np.median(opaque)) if opaque.size else 0.0
    # Paper holds ink: opaque pixels of another tone than the paper's. Opaque pixels of one tone are the ink
    # itself, on a transparent layer (a drawing app's export), however much of the canvas it covers.
    holds_ink = opaque.size > 0 and float(np.abs(opaque - tone).max()) >= 0.1
    if opaque.size >= gray.size / 2 and holds_ink:
        # Mostly opaque: paper with transparent corners or margins. The paper is most of the opaque
        # pixels, so their median is its colour, and the transparent part gets it too.
        background = tone
    else:
        # A drawing on a transparent canvas: the ink is the opaque part (the median, so that light
        # anti-aliased edges do not count as the ink's colour). The background contrasts with it.
        background = 1.0 if tone < 0.5 else 0.0
    return gray * alpha + background * (1.0 - alpha)


# ---------------------------------------------------------------------------
# preprocessing


def preprocess(gray: np.ndarray, dataset: str = "mnist") -> np.ndarray:
    """A grayscale image (float, [0, 1]) to a 28 x 28 uint8 image made the way ``dataset`` was made.

    >>> img = np.ones((100, 60), dtype=np.float32); img[20:80, 25:35] = 0   # a dark bar on white
    >>> out = preprocess(img)
    >>> out.shape, out.dtype, int(out[14, 14]) > 200, int(out[0, 0])
    ((28, 28), dtype('uint8'), True, 0)
    """
    if dataset not in RECIPES:  # "fashion" or "Fashion-MNIST" was given MNIST's recipe without a word
        raise MnistlabError(f"unknown dataset {dataset!r} for preprocessing; choose one of: {', '.join(RECIPES)}")
    recipe = RECIPES[dataset]
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 2:  # an RGB array failed with "too many values to unpack"
        raise MnistlabError(f"preprocess takes a 2-D grayscale image (H x W), got an array of shape {g.shape}; "
                            "read_grayscale gives one from an image file")
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    # MNIST digits are light on black: invert where the ink is darker than the paper, that is where the
    # image reaches further below the border's tone than above it (dark ink on dim grey paper as well).
    dark_ink = background - float(g.min()) > float(g.max()) - background
    if dark_ink:
        g, background = 1.0 - g, 1.0 - background
    g, background = _even_lighting(g, background, dark_ink)
    peak = float(g.max())
    if peak - background < 0.1:
        raise ImageFileError("no digit found: the image is blank (its ink differs from the background by under 10%)")
    ink = np.clip((g - background) / (peak - background), 0.0, 1.0)
    # The background's noise level: 90% of the border pixels are at most this (a digit may touch the border).
    edge = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    y0, y1, x0, x1 = _ink_box(ink, noise=min(float(np.percentile(edge, 90)), INK_THRESHOLD))
    ink = ink[y0:y1, x0:x1]
    if not recipe.stretch:  # (the crop above is found on the stretched ink, whose thresholds assume it)
        # Stretched, a light-grey garment on white came out as bright as a black one, and a Fashion-MNIST image
        # written out as PNG and read back was not the image the model was tested on.
        ink = ink * ((peak - background) / (1.0 - background))

    h, w = ink.shape
    scale = recipe.box / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        # PIL's bilinear resize averages over the whole footprint when shrinking (anti-aliasing).
        ink = np.asarray(Image.fromarray(ink.astype(np.float32)).resize((new_w, new_h), Image.Resampling.BILINEAR))
        ink = np.clip(ink, 0.0, 1.0)

    if recipe.centre == "mass":
        total = ink.sum()
        cy = (ink.sum(1) * np.arange(new_h)).sum() / total
        cx = (ink.sum(0) * np.arange(new_w)).sum() / total
        top, left = _round_half_up(FIELD / 2 - cy), _round_half_up(FIELD / 2 - cx)
    else:
        top, left = (FIELD - new_h) // 2, (FIELD - new_w) // 2
    # A lopsided digit (mass far to one side) would stick out of the field; keep it whole.
    top, left = min(max(top, 0), FIELD - new_h), min(max(left, 0), FIELD - new_w)
    out = np.zeros((FIELD, FIELD), dtype=np.float64)
    out[top : top + new_h, left : left + new_w] = ink
    return np.round(out * 255.0).astype(np.uint8)


def _even_lighting(g: np.ndarray, background: float, dark_ink: bool) -> tuple[np.ndarray, float]:
    """``g`` (ink lighter than the background) and its background level, with the background's smooth trend taken
    out where its border shows one: a photo of paper lit from one side, or darker in the corners.

    Uncorrected, the dim side of the paper stood out from the bright side as much as faint ink does, and the crop
    took it in: the digit shrank to a corner of its box beside a grey ramp (from paper lit 70% to 100% across).
    The trend is a quadratic surface fitted to the border pixels (exact for a linear falloff and a round
    vignette), leaving out ink that touches the border. A trend under ``LIGHTING_TREND`` of the ink's contrast (a
    scan, a drawing, an MNIST image, evenly lit paper) leaves the image as it is. Dim light darkens ink and
    paper alike (it multiplies both), so dark ink is divided by the paper's level; light ink on a dark
    background has the background's level subtracted.
    """
    h, w = g.shape
    if min(h, w) < 8:  # the border is most of the image: no trend to tell from the ink
        return g, background
    y, x = np.linspace(-1.0, 1.0, h), np.linspace(-1.0, 1.0, w)
    ring = [(y[0], x), (y[-1], x), (y[1:-1], x[0]), (y[1:-1], x[-1])]  # top, bottom, left, right
    by = np.concatenate([np.broadcast_to(a, np.broadcast(a, b).shape) for a, b in ring])
    bx = np.concatenate([np.broadcast_to(b, np.broadcast(a, b).shape) for a, b in ring])
    values = np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]])
    terms = np.stack([np.ones_like(bx), bx, by, bx * bx, by * by, bx * by], axis=1)
    # Ink on the border would pull the fit up: start from the border's darker half, which is background (its
    # median is), then take in each pixel that lies within the noise of the fit, and fit again.
    keep = values <= background
    for _ in range(4):
        coef = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0]
        residual = values - terms @ coef
        spread = 1.4826 * float(np.median(np.abs(residual[keep])))  # the noise's standard deviation, robustly
        keep = residual <= 3 * spread + 1 / 255
    on_border = terms @ coef
    low, high = float(on_border.min()), float(on_border.max())
    if high - low < LIGHTING_TREND * max(float(g.max()) - background, 1e-6):
        return g, background
    # Inside, the surface is held to the levels it has on the border, where it was measured: a quadratic fitted
    # to a border partly hidden by ink may bulge in the middle, and a bulge upwards would take away ink.
    surface = (coef[0] + coef[1] * x + coef[3] * x * x)[None, :] + (coef[2] * y + coef[4] * y * y)[:, None]
    surface = np.clip(surface + coef[5] * np.outer(y, x), low, high)
    if dark_ink:  # (1 - g) / (1 - surface) is the original image over the paper's own level, 1 on paper
        flat = (g - surface) / np.maximum(1.0 - surface, 1 / 255)
    else:
        flat = g - surface
    return flat, float(np.median(np.concatenate([flat[0], flat[-1], flat[:, 0], flat[:, -1]])))


def _ink_box(ink: np.ndarray, noise: float) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``, ends exclusive, of the ink in ``ink`` (background 0, ink up to 1).

    On a clean background (``noise`` 0: a drawing, an MNIST image) every pixel that is
    not background is ink, specks included, as in MNIST's own crops. On a noisy one (a
    photo; ``noise`` is the background's own level) the box starts from the clear ink
    (above ``INK_THRESHOLD``; lines at its ends holding no more than ``SPECK_SHARE`` of it
    left out, so a speck far from the digit does not count) and widens line by line to
    take in the faint anti-aliased edge around it -- a line joins while it holds a pixel above ``noise`` -- by at most
    ``FRINGE`` lines per side: some background pixels are above any noise level, and
    2 pixels are nothing in a large photo.
    """
    if noise <= 0:
        rows, cols = np.flatnonzero((ink > 0).any(1)), np.flatnonzero((ink > 0).any(0))
        return int(rows[0]), int(rows[-1] + 1), int(cols[0]), int(cols[-1] + 1)
    strong = ink > INK_THRESHOLD
    # A speck far from the digit (one noisy pixel of a photo, a JPEG artefact) would stretch the box and shrink
    # the digit in it: the rows and columns holding the outermost 0.1% of the clear ink on each side are left
    # out. In a small image every ink pixel is more than that, so nothing is left out there.
    top, bottom = _trimmed_span(strong.sum(1))
    left, right = _trimmed_span(strong.sum(0))
    faint = ink > noise
    for _ in range(FRINGE):
        grown = False
        if top > 0 and faint[top - 1, left:right].any():
            top, grown = top - 1, True
        if bottom < ink.shape[0] and faint[bottom, left:right].any():
            bottom, grown = bottom + 1, True
        if left > 0 and faint[top:bottom, left - 1].any():
            left, grown = left - 1, True
        if right < ink.shape[1] and faint[top:bottom, right].any():
            right, grown = right + 1, True
        if not grown:
            break
    return int(top), int(bottom), int(left), int(right)


def _trimmed_span(counts: np.ndarray, share: float = SPECK_SHARE) -> tuple[int, int]:
    """``(first, last + 1)`` of the lines holding ink, leaving out lines at either end that hold together no
    more than ``share`` of it.

    >>> _trimmed_span(np.array([1, 0, 0, 500, 600, 400, 0, 0]))   # a speck 3 lines above the digit
    (3, 6)
    >>> _trimmed_span(np.array([0, 2, 3, 2, 0]))                   # a small digit: every line counts
    (1, 4)
    """
    cumulative = np.cumsum(counts)
    total = float(cumulative[-1])
    first = int(np.searchsorted(cumulative, share * total, side="right"))
    last = int(np.searchsorted(cumulative, (1 - share) * total, side="left"))
    return first, last + 1


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def load_inputs(
    paths: Sequence[str | Path] | str | Path, dataset: str = "mnist"
) -> list[tuple[str, np.ndarray | None, str | None]]:
    """``(file, 28x28 uint8 image or None, error or None)`` for each path, in order."""
    out = []
    for p in _path_list(paths):
        try:
            out.append((str(p), preprocess(read_grayscale(p), dataset), None))
        except ImageFileError as e:
            msg = str(e)  # most name the file already ("odd/" as Path names it: "odd")
            named = msg.startswith((str(p), str(Path(p))))
            out.append((str(p), None, msg if named else f"{p}: {msg}"))
    return out


# ---------------------------------------------------------------------------
# classifying


def predict_files(
    model: torch.nn.Module,
    paths: Sequence[str | Path] | str | Path,
    *,
    top_k: int = 3,
    save_preprocessed: str | Path | None = None,
) -> list[Prediction]:
    """Preprocess and classify each file (one path alone is one file); a file that cannot be read, or whose
    outputs are not finite (NaN: weights that diverged), gets ``error`` set, the rest are classified.

    ``model`` is one from :func:`~mnistlab.training.checkpoint.load_model` or ``train()`` (it has ``classes``
    and ``dataset``; without ``dataset``, MNIST's preprocessing is used). With ``save_preprocessed``, the 28x28
    input of each file is written there as a PNG (light digit on black, as the model sees it).
    """
    paths = _path_list(paths)
    if isinstance(top_k, bool) or not hasattr(top_k, "__index__"):  # 2.0 failed in torch's topk with a TypeError
        raise MnistlabError(f"--top-k must be a whole number, 1 or more, got {top_k!r}")
    top_k = int(top_k)  # a NumPy integer too
    if top_k < 1:
        raise MnistlabError(f"--top-k must be 1 or more, got {top_k}")
    if save_preprocessed is not None and not str(save_preprocessed).strip():  # Path("") is the current folder
        raise MnistlabError("--save-preprocessed needs a folder name")
    if save_preprocessed is not None:  # --save-preprocessed=~/x reaches us unexpanded: it made a folder named ~
        save_preprocessed = expand_home(Path(save_preprocessed), "--save-preprocessed", MnistlabError)
    _check_takes_field(model)
    if save_preprocessed is not None and Path(save_preprocessed).exists() and not Path(save_preprocessed).is_dir():
        # now, not after every image has been read (seconds each for a photo)
        raise MnistlabError(f"--save-preprocessed {save_preprocessed} is a file, not a folder: give a folder's name")
    classes = list(getattr(model, "classes", None) or [])
    dataset = getattr(model, "dataset", "") or "mnist"
    if dataset not in RECIPES:  # said before any image is read, of the model (preprocess's words are the caller's)
        raise CheckpointError(f"the model was trained on {dataset!r}, and predict knows how the images of "
                              f"{', '.join(RECIPES)} were made, not of that dataset: it cannot prepare images for it")
    inputs = load_inputs(paths, dataset)
    good = [(i, img) for i, (_, img, _) in enumerate(inputs) if img is not None]
    predictions = [Prediction(file=f, error=err) for f, _, err in inputs]
    if save_preprocessed is not None and good:
        _save_inputs(Path(save_preprocessed), predictions, good)
    if not good:
        return predictions
    x = torch.from_numpy(np.stack([img for _, img in good])).unsqueeze(1).float().div_(255)
    probs = predict_logits(model, x, batch_size=500).softmax(1).cpu()  # eval mode, batch by batch, model's device
    if not classes:
        classes = [str(i) for i in range(probs.shape[1])]
    k = min(top_k, probs.shape[1])
    for (i, _), image, p in zip(good, x, probs):
        pred = predictions[i]
        if not torch.isfinite(p).all():
            # The top class of NaNs is an arbitrary one (it printed "8  nan%"): no prediction, as evaluate gives none.
            pred.error = (f"{pred.file}: the model's outputs for it are not finite (NaN or infinite): its weights "
                          "cannot classify it (a run that diverged?)")
            continue
        values, indices = p.topk(k)
        pred.image, pred.probabilities = image, p
        pred.top_k = [
            {"class": int(c), "name": classes[int(c)], "probability": float(v)} for v, c in zip(values, indices)
        ]
    return predictions


def _path_list(paths: Sequence[str | Path] | str | Path) -> list[str | Path]:
    """The files to read: one path given alone is one file (a string was read as a file per character)."""
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _check_takes_field(model: torch.nn.Module) -> None:
    """A CheckpointError, before any image is read, for a model of other images than the 1 x 28 x 28 ones
    :func:`preprocess` makes (a checkpoint saved through the Python API for 32x32 or colour images): its forward
    pass failed on them with a traceback ("mat1 and mat2 shapes cannot be multiplied")."""
    channels, size = getattr(model, "in_channels", None), getattr(model, "image_size", None)
    if channels is None and size is None:  # not a zoo model: nothing says what it takes; its forward will tell
        return
    if (channels, tuple(size or ())) != (1, (FIELD, FIELD)):
        side = "x".join(map(str, size)) if size else "?"
        raise CheckpointError(f"the model takes {side} images of {channels} channel{'s' * (channels != 1)}, and "
                              f"predict makes {FIELD}x{FIELD} grayscale ones, as the MNIST family's are: it cannot "
                              "classify image files with this model")


def _save_inputs(folder: Path, predictions: list[Prediction], good: list[tuple[int, np.ndarray]]) -> None:
    """Write the inputs; interrupted or failed, take back the files written so far and the folders made."""
    from .folders import missing_folders, remove_empty

    made = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(made)
        raise MnistlabError(f"cannot create --save-preprocessed folder {folder}: {e.strerror or e}") from None
    written: list[Path] = []
    try:
        for i, img in good:
            written.append(_save_input(folder, predictions[i], img))
    except BaseException:  # Ctrl-C, SIGTERM (an exception in the CLI) or a failed write
        for path in written:
            path.unlink(missing_ok=True)
        for pred in predictions:
            pred.saved_as = None
        remove_empty(made)
        raise


def _save_input(folder: Path, prediction: Prediction, img: np.ndarray) -> Path:
    """Write one input as a new PNG (never over an existing file); its path."""
    stem = Path(prediction.file).stem or "image"
    for n in itertools.count(1):
        target = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            # "x": a new file only. An existing one, be it the input itself (the folder given is the images'
            # own), an earlier run's output or another input of the same name, is never overwritten.
            with open(target, "xb") as f:
                try:
                    Image.fromarray(img).save(f, format="PNG")  # uint8 H x W: mode L
                except BaseException:
                    f.close()
                    target.unlink(missing_ok=True)  # ours, half written
                    raise
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise MnistlabError(f"cannot write {target}: {e.strerror or e}") from None
    prediction.saved_as = str(target)
    return target


def printable(name: str) -> str:
    """A file name as a terminal can print it: bytes that were not UTF-8 (Python keeps them as surrogates) as
    ``\\xe9``.

    >>> printable("caf\\udce9.png"), printable("café.png")
    ('caf\\\\xe9.png', 'café.png')
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def format_prediction(pred: Prediction) -> str:
    """One line: ``file: name  97.1%   top 3: 7 97.1%, 1 1.8%, 9 0.5%``.

    ``name (class i)`` instead of ``name`` where a class's name is not its number.
    """
    if pred.error is not None:
        return f"error: {pred.error}"  # the message names the file
    best = pred.top_k[0]
    label = best["name"] if best["name"] == str(best["class"]) else f"{best['name']} (class {best['class']})"
    tops = ", ".join(f"{t['name']} {100 * t['probability']:.1f}%" for t in pred.top_k)
    line = f"{printable(pred.file)}: {label}  {100 * best['probability']:.1f}%   top {len(pred.top_k)}: {tops}"
    if pred.saved_as:
        line += f"   (input saved as {pred.saved_as})"
    return line


__all__ = [
    "MAX_PIXELS",
    "RECIPES",
    "ImageFileError",
    "Prediction",
    "read_grayscale",
    "preprocess",
    "load_inputs",
    "predict_files",
    "format_prediction",
]
