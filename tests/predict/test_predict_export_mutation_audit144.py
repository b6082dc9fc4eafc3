"""Audit 144: tests written against mutants of predict.py and export.py that the other tests let live.

Each test pins a behaviour by a hand computation (a known image's preprocessed pixels, a model's fixed
probabilities), not by comparing the code with itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mnistlab import predict
from mnistlab.predict import ImageFileError, format_prediction, predict_files, preprocess, read_grayscale


def _paper(h: int, w: int, level: int = 255) -> np.ndarray:
    return np.full((h, w), level / 255, dtype=np.float32)


def test_a_dark_bar_on_white_is_placed_by_its_centre_of_mass_pixel_for_pixel():
    # 20 x 10 bar: already the 20-pixel box, so no resize. Its centre of mass (9.5, 4.5) goes to (14, 14):
    # top 14 - 9.5 = 4.5 and left 14 - 4.5 = 9.5, both rounded half up, to 5 and 10.
    img = _paper(40, 40)
    img[10:30, 15:25] = 0.0
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[5:25, 10:20] = 255
    np.testing.assert_array_equal(preprocess(img), expected)


def test_a_wide_bar_is_scaled_by_its_longer_side():
    # 10 x 40 light bar on black: the longer side 40 becomes 20, the shorter 10 becomes 5; centre of mass
    # (2, 9.5) -> top 12, left 5 (4.5 rounded half up); a uniform block stays 1 through the resize.
    img = _paper(60, 80, 0)
    img[20:30, 20:60] = 1.0
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[12:17, 5:25] = 255
    np.testing.assert_array_equal(preprocess(img), expected)


def test_fashion_mnist_keeps_each_pixels_darkness_relative_to_the_paper_and_centres_the_box():
    # Ink 50 on paper 200 is 150/200 = 75% darker than the paper: 0.75 * 255 = 191.25 -> 191. The 28 x 13
    # box is the longer side already; centred: left (28 - 13) // 2 = 7.
    img = _paper(60, 60, 200)
    img[10:38, 20:33] = 50 / 255
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[:, 7:20] = 191
    np.testing.assert_array_equal(preprocess(img, "fashion-mnist"), expected)


def test_an_image_of_exactly_max_pixels_is_read_and_one_more_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "MAX_PIXELS", 100)
    Image.new("L", (10, 10), 0).save(tmp_path / "at.png")
    Image.new("L", (10, 11), 0).save(tmp_path / "over.png")
    assert read_grayscale(tmp_path / "at.png").shape == (10, 10)  # "up to MAX_PIXELS"
    with pytest.raises(ImageFileError, match="over.png is 10x11 = "):
        read_grayscale(tmp_path / "over.png")


class _FixedProbabilities(torch.nn.Module):
    """Probabilities 0.2, 0.5, 0.3 for every image; records the images it was given."""

    classes = ["cat", "dog", "bird"]

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to run on
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.tensor([0.2, 0.5, 0.3]).log().expand(x.shape[0], 3) + self.anchor


@pytest.fixture
def two_bars(tmp_path):
    files = []
    for name, (h, w) in {"tall.png": (40, 20), "wide.png": (20, 40)}.items():
        a = np.full((60, 60), 255, dtype=np.uint8)
        a[10 : 10 + h, 10 : 10 + w] = 0
        Image.fromarray(a).save(tmp_path / name)
        files.append(tmp_path / name)
    return files


def test_top_k_lists_every_class_in_order_of_probability_with_its_name(two_bars):
    model = _FixedProbabilities()
    preds = predict_files(model, two_bars, top_k=5)  # more than the 3 classes: all 3
    for pred in preds:
        assert [(t["class"], t["name"]) for t in pred.top_k] == [(1, "dog"), (2, "bird"), (0, "cat")]
        assert [t["probability"] for t in pred.top_k] == pytest.approx([0.5, 0.3, 0.2])
        assert pred.index == 1 and pred.name == "dog"
        assert pred.probabilities.tolist() == pytest.approx([0.2, 0.5, 0.3])
        assert format_prediction(pred).endswith(": dog (class 1)  50.0%   top 3: dog 50.0%, bird 30.0%, cat 20.0%")
    # the model saw each file's own preprocessed image, scaled to [0, 1]
    seen = model.seen[-1]  # (the batches' pass; a probe of one image may come first)
    assert seen.shape == (2, 1, 28, 28) and float(seen.max()) == 1.0
    for pred, path in zip(preds, two_bars):
        expected = torch.from_numpy(preprocess(read_grayscale(path))).float() / 255
        assert torch.equal(pred.image[0], expected)
    assert not torch.equal(preds[0].image, preds[1].image)


def _shifted(model, delta: float):
    """A copy of ``model`` whose logits are all ``delta`` higher (its output layer's bias moved)."""
    import copy

    other = copy.deepcopy(model).eval()
    with torch.no_grad():
        other.get_submodule(other.output_layer).bias.add_(delta)
    return other


@pytest.mark.parametrize("share, kept", [(2e-3, False), (1e-6, True)])
def test_the_check_refuses_logits_a_small_share_off_and_keeps_rounding_noise(digit_model, tmp_path, monkeypatch,
                                                                              export_extra, share, kept):
    # The check's tolerance is 1e-4 of the largest logit: a graph whose logits are all 0.2% higher computes
    # something else (the same classes, other numbers); one 1e-6 off is float rounding.
    import mnistlab.export as export

    with torch.no_grad():
        largest = float(digit_model.eval()(torch.rand(64, 1, 28, 28)).abs().max())
    delta = share * max(1.0, largest)
    real = export._onnx_proto
    monkeypatch.setattr(export, "_onnx_proto", lambda model, shape: real(_shifted(model, delta), shape))
    path = tmp_path / "m.onnx"
    if kept:
        result = export.export_onnx(digit_model, path, name="fast")
        assert result.check.max_difference < 1e-4 and result.check.same_predictions == 65 and path.exists()
    else:
        with pytest.raises(export.MnistlabError, match="computes other outputs than the model"):
            export.export_onnx(digit_model, path, name="fast")
        assert not path.exists()


@pytest.mark.parametrize("mode, value", [("F", 0.7), ("I", -5)])
def test_an_image_of_one_value_without_a_fixed_range_is_blank(tmp_path, mode, value):
    # Float and signed images are read by their own span; with none, the image is black (not 0/0 = NaN).
    Image.fromarray(np.full((30, 30), value, dtype=np.float32 if mode == "F" else np.int32), mode=mode).save(
        tmp_path / "flat.tif")
    g = read_grayscale(tmp_path / "flat.tif")
    assert g.dtype == np.float32 and np.array_equal(g, np.zeros((30, 30), dtype=np.float32))
    with pytest.raises(ImageFileError, match="blank"):
        preprocess(g)


def test_transparent_corners_of_paper_with_mid_grey_ink_get_the_papers_colour(tmp_path):
    # Pencil-grey ink (60% of white) is still ink on the paper: the transparent corners are paper, white.
    img = Image.new("RGBA", (100, 100), (255, 255, 255, 255))
    img.paste((153, 153, 153, 255), (40, 20, 56, 81))
    for x, y in ((0, 0), (85, 0), (0, 85), (85, 85)):
        img.paste((0, 0, 0, 0), (x, y, x + 15, y + 15))
    img.save(tmp_path / "corners.png")
    g = read_grayscale(tmp_path / "corners.png")
    assert g[0, 0] == 1.0 and g[99, 99] == 1.0 and g[50, 45] == pytest.approx(0.6)
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[5:25, 12:17] = 255  # 61 x 16 -> 20 x 5 (a uniform block); centre of mass (9.5, 2) -> top 5, left 12
    np.testing.assert_array_equal(preprocess(g), expected)


def test_a_model_of_non_square_colour_images_exports_and_computes_what_it_does(tmp_path, export_extra):
    from mnistlab.export import export_onnx
    from mnistlab.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", in_channels=3, image_size=(20, 32), mean=(0.1, 0.2, 0.3), std=(0.3, 0.3, 0.3)).eval()
    result = export_onnx(model, tmp_path / "m.onnx", name="cnn")
    assert result.input_shape == ["batch", 3, 20, 32]
    session = export_extra.onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 20, 32]
    x = torch.rand(5, 3, 20, 32)
    outputs = session.run(["logits", "probabilities"], {"images": x.numpy()})
    logits, probabilities = (torch.from_numpy(a) for a in outputs)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probabilities, expected.softmax(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("ink, blank", [(0.95, True), (0.85, False)])
def test_ink_under_a_tenth_of_the_way_from_the_paper_is_blank(ink, blank):
    img = _paper(40, 40)
    img[10:30, 15:25] = ink
    if blank:
        with pytest.raises(ImageFileError, match="blank"):
            preprocess(img)
    else:
        assert preprocess(img)[5:25, 10:20].min() == 255  # as the black bar: stretched to white


def test_kmnist_images_are_made_as_mnists_by_the_centre_of_mass():
    # An L: its mass is down and to the left of its box's middle, so the two ways of centring differ.
    img = _paper(40, 40, 0)
    img[10:30, 10:14] = 1.0
    img[26:30, 10:20] = 1.0
    mnist = preprocess(img, "mnist")
    assert np.array_equal(preprocess(img, "kmnist"), mnist)
    rows, cols = np.flatnonzero(mnist.any(1)), np.flatnonzero(mnist.any(0))
    assert (rows[0], cols[0]) != ((28 - 20) // 2, (28 - 10) // 2)  # not the box centred


def test_a_top_k_of_0_is_refused(two_bars):
    from mnistlab.errors import MnistlabError

    with pytest.raises(MnistlabError, match="--top-k must be 1 or more, got 0"):
        predict_files(_FixedProbabilities(), two_bars, top_k=0)


def test_a_graph_with_another_number_of_outputs_is_not_kept(digit_model, tmp_path, monkeypatch, export_extra):
    import mnistlab.export as export
    from mnistlab.models import build_model

    other = build_model("fast", num_classes=5, mean=(0.13,), std=(0.31,)).eval()
    real = export._onnx_proto
    monkeypatch.setattr(export, "_onnx_proto", lambda model, shape: real(other, shape))
    with pytest.raises(export.MnistlabError, match=r"outputs of shape \[1, 5\] for a batch of 1, PyTorch \[1, 10\]"):
        export.export_onnx(digit_model, tmp_path / "m.onnx", name="fast")
    assert not list(tmp_path.iterdir())


def test_probabilities_that_are_not_the_softmax_of_the_logits_are_not_kept(digit_model, tmp_path, monkeypatch,
                                                                             export_extra):
    import mnistlab.export as export

    class Sigmoid(torch.nn.Module):  # right logits, wrong probabilities
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            logits = self.model(images)
            return logits, torch.sigmoid(logits)

    monkeypatch.setattr(export, "_WithProbabilities", Sigmoid)
    with pytest.raises(export.MnistlabError, match="probabilities are not the softmax of its logits"):
        export.export_onnx(digit_model, tmp_path / "m.onnx", name="fast")
    assert not list(tmp_path.iterdir())


def test_the_files_metadata_names_the_models_classes(digit_model, tmp_path, monkeypatch, export_extra):
    import copy
    import json

    from mnistlab.export import export_onnx

    model = copy.deepcopy(digit_model)
    model.classes = [f"c{i}" for i in range(10)]
    result = export_onnx(model, tmp_path / "m.onnx", name="fast", check=False)
    props = {p.key: p.value for p in export_extra.onnx.load(str(result.path)).metadata_props}
    assert json.loads(props["mnistlab.classes"]) == result.classes == model.classes


def test_specks_as_common_as_a_fifth_of_the_background_are_noise_not_ink():
    # A noisy background: one pixel in five is 5% grey. Its noise level is the border's 90th percentile (5%),
    # so the crop is the bar's, not the whole image's (as it was where the median, 0, was taken for it).
    img = _paper(40, 40, 0)
    yy, xx = np.mgrid[:40, :40]
    img[(yy + xx) % 5 == 0] = 0.05
    img[10:30, 15:25] = 1.0
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[5:25, 10:20] = 255
    np.testing.assert_array_equal(preprocess(img), expected)


def test_the_grey_levels_are_rounded_to_the_nearest_not_down():
    # Fashion-MNIST keeps the darkness relative to the paper: ink 30 on paper 200 is 170/200 = 0.85 of white,
    # 216.75 -> 217 (it was 216 where the levels were cut off).
    img = _paper(60, 60, 200)
    img[10:38, 20:33] = 30 / 255
    out = preprocess(img, "fashion-mnist")
    assert out[14, 14] == 217 and set(np.unique(out)) == {0, 217}


def test_on_a_noisy_background_the_crop_takes_in_the_faint_edge_on_every_side():
    # Clear ink rows 10-29, columns 15-24, with a faint (0.15: above the noise, under INK_THRESHOLD) edge one
    # pixel wide all round: the crop grows by it on each side. A bar touching the bottom of a wide image stops there.
    ink = np.zeros((40, 60))
    ink[9:31, 14:26] = 0.15
    ink[10:30, 15:25] = 1.0
    assert predict._ink_box(ink, noise=0.05) == (9, 31, 14, 26)
    ink[30:] = 0.0
    ink[20:40, 15:25] = 1.0
    assert predict._ink_box(ink, noise=0.05) == (9, 40, 14, 26)
