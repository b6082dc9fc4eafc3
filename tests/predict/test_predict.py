"""`mnistlab predict`: preprocessing the way MNIST was made, on drawn digits, MNIST PNGs and bad files."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistlab.cli import main
from mnistlab.data.datasets import DATASETS
from mnistlab.predict import (
    MAX_PIXELS,
    ImageFileError,
    format_prediction,
    predict_files,
    preprocess,
    read_grayscale,
)


def ink_box(img: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    f = img.astype(np.float64)
    yy, xx = np.mgrid[: f.shape[0], : f.shape[1]]
    return float((f * yy).sum() / f.sum()), float((f * xx).sum() / f.sum())


def write_mnist_pngs(images: torch.Tensor, folder) -> list:
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(img[0].numpy()).save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------
# preprocessing


def test_mnist_pngs_come_out_as_they_went_in(mnist_small, tmp_path):
    """A 28x28 MNIST test image is already made the MNIST way: preprocessing must (nearly) keep it.

    On all 10,000 test images: 8,977 identical, 1,020 off by at most 1 grey level
    (brightest pixel 254, stretched to 255), 3 with ink only 19 pixels tall rescaled to 20.
    """
    images = mnist_small.test.images[:200]
    paths = write_mnist_pngs(images, tmp_path)
    identical = 0
    for img, path in zip(images, paths):
        original = img[0].numpy()
        out = preprocess(read_grayscale(path))
        assert out.shape == (28, 28) and out.dtype == np.uint8
        if max(ink_box(original)) == 20:  # all 200 of these; the recipe rescales any other size
            assert np.abs(out.astype(int) - original.astype(int)).max() <= 1
        identical += np.array_equal(out, original)
    assert identical >= 170  # 176 of these 200 (the other 24 have 254 as their brightest pixel)


def test_predictions_from_mnist_pngs_match_the_tensors(digit_model, mnist_small, tmp_path):
    """Measured: 10,000 of 10,000 test images agree, for three models trained on 2,000 to 10,000 images."""
    index = torch.arange(0, 10000, 50)  # 200 images from all over the test set
    images = mnist_small.test.images[index]
    paths = write_mnist_pngs(images, tmp_path)
    with torch.no_grad():
        expected = digit_model(images.float() / 255).argmax(1).tolist()
    got = [p.index for p in predict_files(digit_model, paths)]
    assert got == expected


def test_drawn_digits_are_centred_and_sized_like_mnist(drawn_digits):
    for (digit, variant), path in drawn_digits.items():
        out = preprocess(read_grayscale(path))
        h, w = ink_box(out)
        # The box is 20; its outermost line may round to black (a JPEG's faint edge shrinks to nearly nothing).
        assert max(h, w) in (19, 20), (digit, variant, h, w)
        cy, cx = centre_of_mass(out)
        assert abs(cy - 14) <= 0.75 and abs(cx - 14) <= 0.75, (digit, variant, cy, cx)
        assert out[0].max() == 0 and out[:, 0].max() == 0  # the background is black, whatever it was


def test_the_same_digit_drawn_differently_gives_the_same_input(drawn_digits):
    """Dark on white or light on black, large or small, RGB, RGBA or JPEG: the model sees (nearly) one image."""
    variants = sorted({v for _, v in drawn_digits})
    for digit in range(10):
        inputs = [preprocess(read_grayscale(drawn_digits[digit, v])).astype(float) for v in variants]
        for other in inputs[1:]:
            # Measured at most 29 grey levels (mean over the image; the thin 1, the JPEG's blur); a
            # different digit differs by 40 to 110.
            assert np.abs(inputs[0] - other).mean() < 35, digit


def test_drawn_digits_are_read(digit_model, drawn_digits):
    """Measured: 39 of 40 right (the JPEG 6 is read as a 5) with this 95% model."""
    files = list(drawn_digits)
    results = predict_files(digit_model, [drawn_digits[k] for k in files], top_k=3)
    wrong = [(d, v, r.name, round(r.top_k[0]["probability"], 2)) for (d, v), r in zip(files, results) if r.index != d]
    assert len(wrong) <= 2, wrong
    for r in results:
        probs = [t["probability"] for t in r.top_k]
        assert len(r.top_k) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_fashion_mnist_recipe_fills_the_field():
    """Fashion-MNIST scaled the longer side to 28 and centred the box, not the mass."""
    img = np.ones((300, 200), dtype=np.float32)
    img[20:280, 30:120] = 0.0  # a dark block, left of centre, on white
    out = preprocess(img, "fashion-mnist")
    assert ink_box(out) == (28, 10)
    cols = np.flatnonzero(out.any(0))
    assert (cols[0], cols[-1]) == (9, 18)  # (28 - 10) // 2 = 9 from the left
    assert ink_box(preprocess(img, "mnist"))[0] == 20


def test_image_modes_are_read_as_grayscale(tmp_path):
    # light ink on a transparent canvas goes onto black; dark ink onto white
    for ink, expected_background in (((255, 255, 255, 255), 0.0), ((0, 0, 0, 255), 1.0)):
        img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
        ImageDraw.Draw(img).rectangle([10, 5, 20, 35], fill=ink)
        img.save(tmp_path / "a.png")
        g = read_grayscale(tmp_path / "a.png")
        assert g[0, 0] == expected_background and g[20, 15] == ink[0] / 255
    # 16-bit grayscale
    a = np.zeros((30, 30), dtype=np.uint16)
    a[5:25, 12:18] = 65535
    Image.fromarray(a).save(tmp_path / "b.png")
    g = read_grayscale(tmp_path / "b.png")
    assert g.max() == 1.0 and g.min() == 0.0
    # palette with a transparent index
    p = Image.new("P", (30, 30), 0)
    p.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    ImageDraw.Draw(p).rectangle([10, 5, 18, 25], fill=1)
    p.info["transparency"] = 0
    p.save(tmp_path / "c.png", transparency=0)
    g = read_grayscale(tmp_path / "c.png")
    assert g[0, 0] == 1.0 and g[15, 14] == 0.0
    out = preprocess(g)
    assert max(ink_box(out)) == 20


def test_transparent_corners_of_opaque_paper_get_the_papers_colour(tmp_path):
    # A screenshot with rounded corners: black ink on white paper, the four corners transparent (black RGB).
    img = Image.new("RGBA", (100, 100), (255, 255, 255, 255))
    ImageDraw.Draw(img).rectangle([40, 20, 55, 80], fill=(0, 0, 0, 255))
    for x, y in ((0, 0), (85, 0), (0, 85), (85, 85)):
        ImageDraw.Draw(img).rectangle([x, y, x + 14, y + 14], fill=(0, 0, 0, 0))
    img.save(tmp_path / "corners.png")
    opaque = img.copy()
    opaque.putalpha(255)
    ImageDraw.Draw(opaque).rectangle([0, 0, 99, 99], fill=(255, 255, 255, 255))
    ImageDraw.Draw(opaque).rectangle([40, 20, 55, 80], fill=(0, 0, 0, 255))
    g = read_grayscale(tmp_path / "corners.png")
    assert g[0, 0] == 1.0 and g[99, 99] == 1.0  # were filled black: bright blobs once inverted
    assert np.array_equal(preprocess(g), preprocess(np.asarray(opaque.convert("L"), dtype=np.float32) / 255))


def test_a_transparent_canvas_under_ink_with_light_edges_stays_paper(tmp_path):
    # A palette PNG: the white index is transparent, the ink dark grey with wide opaque light-grey edges. The
    # edges made the opaque part's mean light (0.54), so the canvas was filled black and the stroke, darker
    # than that, became a hole in an outline.
    p = Image.new("P", (60, 60), 0)
    p.putpalette([255, 255, 255, 50, 50, 50, 230, 230, 230] + [0] * 759)
    ImageDraw.Draw(p).rectangle([18, 8, 38, 52], fill=2)  # the light edge (464 pixels) ...
    ImageDraw.Draw(p).rectangle([22, 12, 34, 48], fill=1)  # ... around a dark stroke (481)
    p.save(tmp_path / "p.png", transparency=0)
    g = read_grayscale(tmp_path / "p.png")
    assert g[0, 0] == 1.0 and g[30, 28] == pytest.approx(50 / 255, abs=0.01)
    out = preprocess(g)
    assert out[14, 14] > 200  # the stroke's middle is ink, not a hole


def test_dark_ink_on_dim_paper_is_found():
    g = np.full((100, 100), 0.45, dtype=np.float32)  # an under-exposed photo of paper
    g[20:80, 45:55] = 0.10
    out = preprocess(g)
    assert max(ink_box(out)) == 20 and out[14, 14] > 200
    assert np.array_equal(out, preprocess(1.0 - g))  # as the same digit light on dark


def test_32_bit_integer_images_are_scaled_by_their_range(tmp_path):
    a = np.zeros((40, 40), dtype=np.int32)
    a[10:30, 15:25] = 5_000_000
    a[12:28, 18:22] = 10_000_000
    Image.fromarray(a, mode="I").save(tmp_path / "i.tif")
    g = read_grayscale(tmp_path / "i.tif")
    assert g.max() == 1.0 and g[11, 16] == 0.5  # was clipped to 1: every ink pixel saturated


def test_an_exif_block_with_a_malformed_tag_still_turns_the_image(tmp_path, monkeypatch):
    # Orientation 6 (turned), and tag 0x011C, a number, stored as the text "Canon": ImageOps.exif_transpose
    # re-encoded the block and raised struct.error out of predict, which lost every file's prediction.
    entries = [struct.pack(">HHII", 0x0112, 3, 1, 6 << 16), struct.pack(">HHII", 0x011C, 2, 6, 8 + 2 + 2 * 12 + 4)]
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 2) + b"".join(entries) + b"\0\0\0\0" + b"Canon\0"
    img = Image.new("L", (40, 20), 255)
    ImageDraw.Draw(img).rectangle([5, 5, 30, 10], fill=0)  # a horizontal bar
    img.save(tmp_path / "turned.jpg", exif=b"Exif\x00\x00" + tiff, quality=95)
    g = read_grayscale(tmp_path / "turned.jpg")
    assert g.shape == (40, 20)  # upright: 20 wide, 40 high
    assert g[8:28, 10:14].mean() < 0.1 and g[:, :5].mean() > 0.9  # the bar now runs down the image

    # A block Pillow cannot parse at all is that file's error, not a traceback.
    def broken(self):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    with pytest.raises(ImageFileError, match=r"turned.jpg has damaged EXIF metadata \(error: unpack .*save the image"):
        read_grayscale(tmp_path / "turned.jpg")


def test_a_file_name_that_is_not_utf8_is_printed_escaped(digit_run, drawn_digits, tmp_path, capsys):
    import os

    name = os.fsdecode(b"caf\xe9.png")  # a byte a UTF-8 terminal cannot print as it is
    shutil.copy(drawn_digits[7, "paper.png"], tmp_path / name)
    assert main(["predict", str(digit_run), str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # printable; the print raised UnicodeEncodeError under a strict UTF-8 stdout
    assert "caf\\xe9.png: " in out


# ---------------------------------------------------------------------------
# bad files


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (with a valid CRC) and whose data is one pixel: nothing decodes."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # chunk type and the 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.fixture
def bad_files(tmp_path):
    files = {}

    def add(name, content):
        files[name] = tmp_path / name
        files[name].write_bytes(content)

    add("empty.png", b"")
    add("notes.png", b"this is a text file, not a picture\n")
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 60).save(buf, "PNG")
    add("truncated.png", buf.getvalue()[: len(buf.getvalue()) // 2])
    add("zero.png", png_claiming_size(0, 28))
    add("huge.png", png_claiming_size(10_000, 6_000))  # 60 megapixels
    add("bomb.png", png_claiming_size(20_000, 20_000))  # past Pillow's own decompression-bomb limit
    add("large.png", png_claiming_size(10_000, 10_000))  # past Pillow's warning (89 MP), not its limit
    buf = io.BytesIO()
    Image.new("LAB", (30, 30), (50, 0, 0)).save(buf, "TIFF")
    add("lab.tif", buf.getvalue())
    buf = io.BytesIO()
    Image.new("L", (50, 50), 255).save(buf, "PNG")
    add("blank.png", buf.getvalue())
    buf = io.BytesIO()
    nan = np.zeros((28, 28), dtype=np.float32)
    nan[10:18, 12:16], nan[0, 0] = 1.0, np.nan
    Image.fromarray(nan, mode="F").save(buf, "TIFF")
    add("nan.tif", buf.getvalue())
    files["folder"] = tmp_path / "folder"
    files["folder"].mkdir()
    files["missing.png"] = tmp_path / "missing.png"
    return files


EXPECTED_ERRORS = {
    "empty.png": "is empty (0 bytes)",
    "notes.png": "is not an image Pillow can read",
    "truncated.png": "is a damaged or truncated image",
    "zero.png": "zero width or height",
    "huge.png": f"10000x6000 = 60 megapixels, more than the {MAX_PIXELS // 1_000_000} megapixels",
    "bomb.png": f"is more than 179 megapixels, more than the {MAX_PIXELS // 1_000_000} megapixels mnistlab reads",
    "large.png": f"10000x10000 = 100 megapixels, more than the {MAX_PIXELS // 1_000_000} megapixels",
    "lab.tif": "is a LAB image, which Pillow cannot turn into grayscale",
    "blank.png": "no digit found: the image is blank",
    "nan.tif": "has NaN or infinite pixel values",
    "folder": "is a folder, not an image file",
    "missing.png": "does not exist",
}


def test_each_bad_file_gets_its_own_error_and_the_rest_are_classified(digit_model, drawn_digits, bad_files):
    good = drawn_digits[7, "paper.png"]
    paths = [bad_files["empty.png"], good, *[bad_files[n] for n in EXPECTED_ERRORS if n != "empty.png"], good]
    results = predict_files(digit_model, paths)
    assert [r.file for r in results] == [str(p) for p in paths]
    assert results[1].error is None and results[1].index == 7 and results[-1].index == 7
    for r, path in zip(results, paths):
        if path == good:
            continue
        assert r.error is not None and str(path) in r.error, r.error
        assert EXPECTED_ERRORS[path.name] in r.error, r.error
        assert r.to_dict() == {"file": str(path), "error": r.error}
    with pytest.raises(ImageFileError, match="no digit found"):
        preprocess(np.full((30, 30), 0.5, dtype=np.float32))


def test_an_unreadable_file_is_not_called_damaged(tmp_path, monkeypatch):
    # chmod 000 does not stop root (CI), so the refusal is made by the open call itself
    path = tmp_path / "secret.png"
    Image.new("L", (28, 28), 0).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageFileError, match=r"cannot read .*secret.png: Permission denied$"):
        read_grayscale(path)


# ---------------------------------------------------------------------------
# the command


def test_cli_prints_json_saves_inputs_and_reports_bad_files(digit_run, drawn_digits, bad_files, tmp_path, capsys):
    files = [drawn_digits[3, "photo.jpg"], drawn_digits[8, "night.bmp"], bad_files["notes.png"]]
    saved = tmp_path / "seen"
    code = main(["predict", str(digit_run), *map(str, files), "--json", "--top-k", "4", "--save-preprocessed", str(saved)])
    out, err = capsys.readouterr()
    assert code == 1  # one file failed; the others were classified
    assert "mnistlab predict: error:" in err and "notes.png is not an image" in err and "Traceback" not in err
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(f) for f in files]
    for r, digit in zip(results[:2], (3, 8)):
        assert set(r) >= {"file", "class", "name", "top_k"}
        assert r["class"] == digit and r["name"] == str(digit)
        assert [set(t) for t in r["top_k"]] == [{"class", "name", "probability"}] * 4
        assert r["top_k"][0]["class"] == r["class"]
        seen = np.asarray(Image.open(r["preprocessed"]))
        assert seen.shape == (28, 28) and np.array_equal(seen, preprocess(read_grayscale(r["file"])))
    assert results[2] == {"file": str(files[2]), "error": results[2]["error"]} and "not an image" in results[2]["error"]
    assert sorted(p.name for p in saved.iterdir()) == ["3-photo.png", "8-night.png"]

    # Saved into the images' own folder: the input (a PNG of the very name the output would take) stays as it was,
    # and so do the outputs of an earlier call into the same folder.
    own = tmp_path / "own"
    own.mkdir()
    shutil.copyfile(drawn_digits[5, "paper.png"], own / "5.png")
    original = (own / "5.png").read_bytes()
    assert main(["predict", str(digit_run), str(own / "5.png"), "--save-preprocessed", str(own)]) == 0
    assert main(["predict", str(digit_run), str(files[0]), "--save-preprocessed", str(saved)]) == 0
    capsys.readouterr()
    assert (own / "5.png").read_bytes() == original
    assert sorted(p.name for p in own.iterdir()) == ["5-2.png", "5.png"]
    assert sorted(p.name for p in saved.iterdir()) == ["3-photo-2.png", "3-photo.png", "8-night.png"]

    code = main(["predict", str(digit_run / "best.ckpt"), str(files[0]), str(files[1])])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{files[0]}: 3 ") and "top 3: 3 " in lines[0]

    assert main(["predict", str(digit_run), str(files[0]), "--top-k", "0"]) == 2
    assert "--top-k must be 1 or more" in capsys.readouterr().err
    # An empty folder name is refused: it wrote the inputs into the current folder.
    assert main(["predict", str(digit_run), str(files[0]), "--save-preprocessed", ""]) == 2
    assert "--save-preprocessed needs a folder name" in capsys.readouterr().err


def test_class_names_come_from_the_checkpoint(digit_model, drawn_digits):
    """A Fashion-MNIST model prints its class names (and uses Fashion-MNIST's recipe)."""
    classes, dataset = digit_model.classes, digit_model.dataset
    digit_model.classes, digit_model.dataset = list(DATASETS["fashion-mnist"].classes), "fashion-mnist"
    try:
        (r,) = predict_files(digit_model, [drawn_digits[7, "paper.png"]], top_k=2)
    finally:
        digit_model.classes, digit_model.dataset = classes, dataset
    assert r.name == DATASETS["fashion-mnist"].classes[r.index]
    assert [t["name"] for t in r.top_k] == [DATASETS["fashion-mnist"].classes[t["class"]] for t in r.top_k]
    assert max(ink_box(r.image[0].numpy() > 0)) == 28
    assert f"{r.name} (class {r.index})" in format_prediction(r)


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_a_16_bit_file_of_fewer_bits_is_read_at_its_own_depth(tmp_path, bits):
    # A 12-bit scan (white 4095) in a 16-bit PNG was divided by 65535: at most 6% grey, and called blank.
    a = np.zeros((30, 30), dtype=np.uint16)
    a[5:25, 12:18] = 2**bits - 1
    a[5:8, 12:14] = 2 ** (bits - 1)  # a mid grey stays a mid grey
    Image.fromarray(a).save(tmp_path / "scan.png")
    g = read_grayscale(tmp_path / "scan.png")
    assert g.max() == 1.0 and g.min() == 0.0 and abs(g[6, 12] - 0.5) < 1e-3
    assert max(ink_box(preprocess(g))) == 20  # a digit, not "blank"
