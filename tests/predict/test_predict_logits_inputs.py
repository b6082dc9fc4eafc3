"""The Python API's predict_logits (a callback's ``trainer.predict``) and evaluate_ensemble given what users have:
integer images from numpy, no images at all, one path instead of a list."""

from __future__ import annotations

import re

import pytest
import torch

from mnistlab.models import build_model
from mnistlab.training.ensemble import evaluate_ensemble
from mnistlab.training.evaluate import predict_logits


def small_cnn(**options):
    torch.manual_seed(0)
    return build_model("cnn", width=0.25, mean=(0.1307,), std=(0.3081,), **options)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_integer_images_of_0_255_are_taken_as_uint8_ones(mnist_small, dtype):
    # They were passed on as unscaled floats: logits ~900 off, other classes
    model, images = small_cnn(), mnist_small.val.images[:64]
    torch.testing.assert_close(predict_logits(model, images.to(dtype)), predict_logits(model, images))


def test_integer_images_outside_0_255_are_refused_with_what_to_do():
    images = torch.zeros(2, 1, 28, 28, dtype=torch.int32)
    images[1, 0, 5, 5] = 4095  # 12-bit pixel values
    with pytest.raises(ValueError, match=re.escape("integer images are taken as 8-bit pixel values, 0-255, but these "
                                                   "torch.int32 images span [0, 4095]: scale them to 0-255, or pass "
                                                   "floats in [0, 1]")):
        predict_logits(small_cnn(), images)
    with pytest.raises(ValueError, match=re.escape("span [-1, 0]")):
        predict_logits(small_cnn(), -images.clamp(max=1))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32])
def test_no_images_give_no_rows_of_the_models_class_count(dtype):
    # An empty batch gave a (0, 0) tensor, whose .argmax(1) raised
    for num_classes in (10, 3):
        logits = predict_logits(small_cnn(num_classes=num_classes), torch.zeros(0, 1, 28, 28, dtype=dtype))
        assert logits.shape == (0, num_classes) and logits.argmax(1).tolist() == []


def test_an_ensemble_of_one_path_instead_of_a_list_is_refused(tmp_path):
    # A str was taken letter by letter: "run folder / has no best.ckpt"
    for runs in [str(tmp_path), tmp_path]:
        message = (f"evaluate_ensemble() takes a list of runs or checkpoints, e.g. ['runs/a', 'runs/b'], got one "
                   f"path, {runs!r}: put it in a list")
        with pytest.raises(TypeError, match=re.escape(message)):
            evaluate_ensemble(runs)
