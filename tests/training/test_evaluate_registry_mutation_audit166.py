"""Audit 166: mutation testing of training/evaluate.py (stored_data, rows_per_pass, class metrics, per-class
accuracy, TTA loss, pixel checks) and models/_registry.py (register, list_models, model_options,
check_options_taken, build_model's normalization and memory budget, meta_model). Each test names the hand-made
mutant it kills; the expected values are worked out by hand in the comments."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from mnistlab.config import DataConfig
from mnistlab.data.batching import Split
from mnistlab.errors import ConfigError
from mnistlab.models import _registry
from mnistlab.models._registry import build_model, check_options_taken, list_models, model_options, register

ev_module = importlib.import_module("mnistlab.training.evaluate")  # mnistlab.training.evaluate is the function


class _Lookup(nn.Module):
    """Predicts the class written (as a 0-255 value) in each image's top-left pixel, with logit 5 for it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, x):
        cls = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(cls, 10).float() * self.scale


def _split_predicting(predicted: list[int], labels: list[int]) -> Split:
    images = torch.zeros(len(predicted), 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(predicted, dtype=torch.uint8)
    return Split(images, torch.tensor(labels))


def test_per_class_accuracy_divides_by_each_classs_images_not_its_predictions():
    # labels 0 0 0 1 predicted 0 1 1 1: class 0 has 3 images, 1 right (1/3); class 1 has 1 image, right (1/1).
    # Columns would give 1/1 and 1/3. Mutant killed: confusion.sum(0) for sum(1).
    ev = ev_module.evaluate(_Lookup(), _split_predicting([0, 1, 1, 1], [0, 0, 0, 1]))
    assert ev.per_class_accuracy[0] == pytest.approx(1 / 3) and ev.per_class_accuracy[1] == 1.0
    assert all(math.isnan(a) for a in ev.per_class_accuracy[2:])  # no images
    assert ev.confusion[0].tolist()[:2] == [1, 2] and ev.confusion[1].tolist()[:2] == [0, 1]
    assert ev.accuracy == 0.5


def test_the_tta_loss_is_that_of_the_mean_of_the_views_with_the_smoothing_asked_for():
    # A model that gives logits [0, 0] to every view: each view's softmax is [1/2, 1/2], and so is their mean.
    # Loss with smoothing s over 2 classes: -(1 - s/2) log 1/2 - (s/2) log 1/2 = log 2, whatever s. So use a
    # model with logits [0, log 3]: p = [1/4, 3/4]; label 0: plain loss log 4; with s = 0.2 the target is
    # [0.9, 0.1]: 0.9 log 4 + 0.1 log(4/3). Mutants killed: the views summed, not averaged (the log n dropped,
    # loss lower by log 5), and the smoothing dropped in the TTA branch.
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.0, math.log(3.0)]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 2)

    split = Split(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    plain = ev_module.evaluate(Fixed(), split, tta_shift=1)
    assert plain.loss == pytest.approx(math.log(4.0), rel=1e-6)
    assert plain.probabilities[0].tolist() == pytest.approx([0.25, 0.75], rel=1e-6)
    smoothed = ev_module.evaluate(Fixed(), split, tta_shift=1, label_smoothing=0.2)
    assert smoothed.loss == pytest.approx(0.9 * math.log(4.0) + 0.1 * math.log(4 / 3), rel=1e-6)


def test_rows_per_pass_keeps_the_largest_activation_under_the_mmap_threshold():
    # One 28x28 image through a conv of 64 maps: 64 * 784 * 4 = 200,704 bytes; 32 MiB // 200,704 = 167 images.
    # Mutant killed: max for min (the batch size grew past what was asked, or past the threshold).
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1)).eval()
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    with torch.no_grad():
        assert ev_module.rows_per_pass(model, image, 500) == 167
        assert ev_module.rows_per_pass(model, image, 100) == 100
        assert ev_module.rows_per_pass(model, image, 1) == 1


def test_a_model_with_a_forward_hook_sees_only_the_passes_asked_for():
    # 10 images at 5 a pass: the hook runs twice. Mutant killed: rows_per_pass measuring a hooked model (its
    # extra pass of one image reached the hook).
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    logits = ev_module.predict_logits(model, torch.zeros(10, 1, 28, 28, dtype=torch.uint8), batch_size=5)
    assert logits.shape == (10, 10) and seen == [5, 5]


@pytest.mark.parametrize("value", [256, -1])
def test_integer_images_past_0_255_are_refused(value):
    # 256 wraps round to 0 as uint8. Mutant killed: high > 256 for high > 255.
    images = torch.zeros(2, 1, 28, 28, dtype=torch.int64)
    images[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=rf"integer images are taken as 8-bit pixel values, 0-255, but these "
                                         rf"torch.int64 images span \[{min(value, 0)}, {max(value, 0)}\]"):
        ev_module.predict_logits(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), images)
    images[0, 0, 0, 0] = 255  # the edge itself is a pixel value
    assert ev_module.predict_logits(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), images).shape == (2, 10)


@pytest.mark.parametrize("folder", ["", "   "])
def test_stored_data_refuses_an_empty_folder(folder):
    # Mutant killed: the check dropped (the run's folder replaced by "" or blanks).
    with pytest.raises(ConfigError, match="--data-dir needs a folder"):
        ev_module.stored_data(DataConfig(dir="/data"), folder)
    assert ev_module.stored_data(DataConfig(dir="/data", test_limit=7), None) == DataConfig(dir="/data")


def _tiny(*, num_classes, in_channels, image_size, width: float = 1.0):
    from mnistlab.models.cnn import make_cnn

    return make_cnn("audit166_tiny", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                    channels=[4, 8], kernel_sizes=[3, 3], paddings=[1, 1], width=width)


def test_the_same_builder_registered_again_replaces_it_and_another_is_refused():
    # A notebook cell run twice defines the function afresh under the same module and name. Mutants killed:
    # every second registration refused; none refused.
    name = "audit166_tiny"
    try:
        register(name)(_tiny)
        def again(**kwargs):  # the cell run again: another function object, the same module and name
            return None

        again.__module__, again.__qualname__ = _tiny.__module__, _tiny.__qualname__
        register(name)(again)
        assert _registry._REGISTRY[name] is again

        def _other(*, num_classes, in_channels, image_size):
            return None

        with pytest.raises(ValueError, match=rf"model '{name}' is registered twice \(.*_tiny and .*_other\)"):
            register(name)(_other)
        assert _registry._REGISTRY[name] is again
    finally:
        _registry._REGISTRY.pop(name, None)


def test_list_models_is_sorted_whatever_the_order_of_registration():
    # Mutant killed: the registry's insertion order.
    try:
        register("aaa_audit166")(_tiny)
        names = list_models()
        assert names == sorted(names) and names[0] == "aaa_audit166" and "cnn" in names
    finally:
        _registry._REGISTRY.pop("aaa_audit166", None)


def test_model_options_are_ordinary_and_keyword_only_parameters_but_the_structural_three():
    # Mutant killed: only keyword-only parameters counted (width, an ordinary one, lost).
    def plain(num_classes, in_channels, image_size, width=1.0, *, depth=2, **extra):
        return _tiny(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)

    try:
        register("audit166_plain")(plain)
        assert model_options("audit166_plain") == ["width", "depth"]
        check_options_taken("audit166_plain", {"width": 0.5, "depth": 3})
    finally:
        _registry._REGISTRY.pop("audit166_plain", None)


def test_options_set_to_none_are_not_refused():
    # None is "the model's own default" (build_model drops them). Mutant killed: a None option refused.
    check_options_taken("cnn", {"no_such_option": None, "width": 0.25})
    with pytest.raises(ConfigError, match=r"model 'cnn' does not take option\(s\) no_such_option; it takes: "):
        check_options_taken("cnn", {"no_such_option": 1})


def test_build_model_stores_the_mean_and_std_given():
    # Mutant killed: the mean given dropped for the default 0.
    net = build_model("cnn", width=0.25, mean=(0.5,), std=(0.25,))
    assert net.mean.flatten().tolist() == [0.5] and net.std.flatten().tolist() == [0.25]
    net = build_model("cnn", width=0.25)
    assert net.mean.flatten().tolist() == [0.0] and net.std.flatten().tolist() == [1.0]


def test_the_memory_budget_adds_up_every_tensor_of_the_build(monkeypatch):
    # cnn at width 1: weights and buffers 115,760 bytes, the largest one tensor of 62,720. With 100,000 bytes
    # free every tensor fits alone, but not all together. Mutants killed: each tensor counted alone (used = ..,
    # not +=), and only non-CPU tensors counted.
    monkeypatch.setattr(importlib.import_module("mnistlab.training.fit"), "available_memory", lambda: 100_000)
    with pytest.raises(ConfigError, match=r"model 'cnn' is too large to build with \{\}: its weights and its dry "
                                          r"run's input need more than 0 MiB, but this machine has 0 MiB free"):
        build_model("cnn")
    monkeypatch.setattr(importlib.import_module("mnistlab.training.fit"), "available_memory", lambda: 10_000_000)
    assert isinstance(build_model("cnn"), nn.Module)


@pytest.mark.parametrize("name, options, fits", [
    # 4x4 images: crop 1 leaves 2x2, too small for the 5x5 kernel's padding; only crop 0 fits
    ("cnn", {"image_size": (4, 4), "crop": 1}, "model.crop = 0"),
    # crop 12 leaves 4x4 for a 5x5 kernel; 8 leaves 12x12, the largest crop that fits (the nearest to 12)
    ("fast", {"crop": 12}, "model.crop = 8"),
    # five pools take 28 to 0: the last pool goes, the others stay where they were
    ("vgg", {"channels": [8, "M", 16, "M", 32, "M", 64, "M", 64, "M"]},
     'model.channels = [8, "M", 16, "M", 32, "M", 64, "M", 64]'),
])
def test_a_model_too_small_names_the_nearest_value_that_fits(name, options, fits):
    # Mutants killed: crop 0 never tried; the farthest value that fits named, not the nearest; a VGG layout
    # losing its first pools instead of its last.
    from mnistlab.models.base import MapTooSmall

    with pytest.raises(MapTooSmall) as caught:
        build_model(name, **options)
    assert str(caught.value).endswith(f"; it fits with {fits} (the other options as set)")


@pytest.mark.parametrize("sizes", [{"num_classes": 0}, {"in_channels": 0}, {"image_size": (0, 28)},
                                   {"num_classes": True}, {"image_size": (28, True)}])
def test_counts_of_zero_or_booleans_are_refused_before_the_builder_runs(sizes):
    # Mutants killed: sizes of 0 taken (min >= 0), and True taken for 1.
    with pytest.raises(ConfigError, match=r"num_classes, in_channels and image_size \(height, width\) must be "
                                          r"positive whole numbers, got "):
        build_model("cnn", width=0.25, **sizes)
