"""`mnistlab predict` on what an audit fed it: ink on a transparent layer, specks in a photo, signed pixel values."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistlab.cli import main
from mnistlab.predict import predict_files, preprocess, read_grayscale


def _bar(size: int = 100) -> np.ndarray:
    g = np.ones((size, size), dtype=np.float32)  # a dark bar on white paper
    g[size // 5 : 4 * size // 5, 9 * size // 20 : 11 * size // 20] = 0.0
    return g


def test_ink_on_a_transparent_layer_is_ink_however_much_of_the_canvas_it_covers(tmp_path):
    # A tight crop of a drawing app's export: black RGB everywhere, the stroke in alpha, covering over half the
    # canvas. Taken for paper with transparent margins, it was filled with its own colour: "the image is blank".
    alpha = np.zeros((40, 30), dtype=np.uint8)
    alpha[:, 6:24] = 255  # 60% of the canvas
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "layer.png")
    g = read_grayscale(tmp_path / "layer.png")
    assert g[0, 0] == 1.0 and g[20, 15] == 0.0  # the canvas is paper, the stroke ink
    opaque = np.where(alpha > 0, 0.0, 1.0).astype(np.float32)
    assert np.array_equal(preprocess(g), preprocess(opaque))


def test_a_speck_far_from_the_digit_does_not_stretch_the_crop():
    # A photo: grey paper with noise, a dark bar, and one JPEG-like dark speck 300 pixels away. The crop took the
    # speck in: the bar came out small and off-centre.
    rng = np.random.default_rng(0)
    g = np.clip(0.78 + rng.normal(0, 0.02, (800, 800)), 0, 1).astype(np.float32)
    g[100:400, 180:240] = 0.1
    clean = preprocess(g.copy())
    g[700, 700] = 0.55
    speck = preprocess(g)
    assert np.abs(speck.astype(int) - clean.astype(int)).max() <= 1
    assert (clean > 128).sum() > 60  # the bar fills the field's height, as in MNIST


@pytest.mark.parametrize("mode, pixels", [
    ("F", lambda digit: digit.astype(np.float32) - 0.5),  # values -0.5 .. 0.5
    ("F", lambda digit: digit.astype(np.float32) - 1.0),  # all at or below 0
    ("F", lambda digit: digit.astype(np.float32) * 1e-20),  # a tiny range
    ("I", lambda digit: (digit * 255).astype(np.int32) - 128),  # signed integers
])
def test_signed_and_tiny_pixel_values_keep_all_their_ink(tmp_path, mode, pixels):
    # Divided by their maximum and clipped to [0, 1]: negative ink turned black, a tiny range was "blank".
    digit = np.zeros((40, 40), dtype=np.float64)
    digit[8:32, 16:24] = 1.0
    digit[8:32, 14:16] = 0.5  # a half-tone edge
    Image.fromarray(pixels(digit), mode=mode).save(tmp_path / "d.tif")
    ours, theirs = preprocess(read_grayscale(tmp_path / "d.tif")), preprocess(digit.astype(np.float32))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1  # (the integers' half-tone is 127 of 255)


def test_an_interrupted_predict_takes_back_the_inputs_it_saved(digit_model, tmp_path, monkeypatch):
    # Interrupted after some PNGs of --save-preprocessed were written, it left them in a folder it had made.
    import mnistlab.predict as predict

    images = []
    for i in range(4):
        Image.fromarray((_bar() * 255).astype(np.uint8)).save(tmp_path / f"d{i}.png")
        images.append(tmp_path / f"d{i}.png")
    real, calls = predict._save_input, []

    def stopped_at_the_third(folder, prediction, img):
        calls.append(prediction.file)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(folder, prediction, img)

    monkeypatch.setattr(predict, "_save_input", stopped_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        predict_files(digit_model, images, save_preprocessed=tmp_path / "new" / "inputs")
    assert not (tmp_path / "new").exists()
    assert len(calls) == 3


def test_loading_a_model_leaves_the_callers_random_stream_alone(digit_run):
    from mnistlab.training.checkpoint import load_model

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    load_model(digit_run)  # building it drew its (replaced) initial weights from the global stream
    assert torch.equal(torch.rand(4), expected)


def test_errors_name_a_folder_once_and_files_as_stdout_does(digit_run, tmp_path, capsys):
    (tmp_path / "odd").mkdir()
    odd_name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.png")
    with open(odd_name, "wb"):
        pass  # empty: an error that names it
    assert main(["predict", str(digit_run), f"{tmp_path / 'odd'}/", odd_name]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'odd'} is a folder, not an image file" in err  # not "odd/: odd is a folder"
    assert "caf\\xe9.png" in err and "\\udce9" not in err


def test_a_file_that_failed_says_so_when_asked_for_its_class(digit_model, tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (bad,) = predict_files(digit_model, [tmp_path / "zero.png"])
    for attribute in ("name", "index"):  # a bare IndexError said nothing of the file
        with pytest.raises(ValueError, match=r"zero.png has no prediction: .*is empty \(0 bytes\)"):
            getattr(bad, attribute)


def test_an_eps_file_without_ghostscript_is_said_to_need_it(tmp_path, monkeypatch):
    # It was "a damaged or truncated image (Unable to locate Ghostscript on paths)": the file is fine.
    import mnistlab.predict as predict_module

    monkeypatch.setattr(predict_module, "_has_ghostscript", lambda: False)
    eps = tmp_path / "seven.eps"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 5 22 moveto 22 22 lineto 10 4 lineto "
                   "stroke\nshowpage\n")
    with pytest.raises(predict_module.ImageFileError, match=r"seven.eps is an EPS \(PostScript\) file, which Pillow "
                                                            r"draws with Ghostscript, and Ghostscript \(gs\) is not "
                                                            r"installed; install it, or save the image as PNG"):
        read_grayscale(eps)
