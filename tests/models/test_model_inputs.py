"""What a zoo model takes when called directly, and which builders' parameters count as options."""

from __future__ import annotations

import re

import pytest
import torch

from mnistlab.config import ModelConfig
from mnistlab.models import _registry, build_model, model_options, register
from mnistlab.models.cnn import make_cnn
from mnistlab.training.evaluate import predict_logits


def digits(mnist_small, n=8):
    return mnist_small.val.images[:n]  # uint8, (n, 1, 28, 28)


def small_cnn(**options):
    torch.manual_seed(0)
    return build_model("cnn", width=0.25, mean=(0.1307,), std=(0.3081,), **options).eval()


def test_float64_images_give_what_float32_ones_do(mnist_small):
    # numpy's default float reached the first conv as float64: "Input type (double) and bias type (float)"
    model, x = small_cnn(), digits(mnist_small)
    with torch.no_grad():
        expected = model(x.float() / 255)
        torch.testing.assert_close(model(x.double() / 255), expected)
        assert model(x.double() / 255).dtype == torch.float32


@pytest.mark.parametrize("crop", [0, 2])
def test_a_batch_without_its_channel_axis_and_one_image_are_taken_by_a_one_channel_model(mnist_small, crop):
    # (N, 28, 28) broadcast against the (1, 1, 1, 1) mean into one image of N channels, and the first conv
    # failed; one (28, 28) image worked that way by chance, and not at all with a crop
    model, x = small_cnn(crop=crop), digits(mnist_small)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(model(x[:, 0]), expected)
        torch.testing.assert_close(model(x[0, 0]), expected[:1])
        torch.testing.assert_close(model(x[0]), expected[:1])


def test_predict_logits_takes_the_shapes_the_model_takes(mnist_small):
    # predict_logits split a (28, 28) image into 28 one-row images: "Output size is too small"
    model, x = small_cnn(), digits(mnist_small)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(predict_logits(model, x[0, 0]), expected[:1])
    torch.testing.assert_close(predict_logits(model, x[:, 0]), expected)
    torch.testing.assert_close(predict_logits(model, x[:, 0], batch_size=3), expected)


def test_a_multichannel_model_takes_one_image_of_its_channels_and_refuses_other_shapes():
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25, in_channels=3).eval()
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x[1]), model(x)[1:])
    with pytest.raises(ValueError, match=r"images must be a batch \(N, 3, H, W\) or one \(3, H, W\) image for this "
                                         r"3-channel model, got shape \(28, 28\)"):
        model(x[0, 0])
    # a one-channel batch broadcast against the 3-channel mean and was classified as if it were colour
    with pytest.raises(ValueError, match=r"for this 3-channel model, got shape \(2, 1, 28, 28\)"):
        model(x[:, :1])
    one_channel = small_cnn()
    for shape in [(28,), (2, 1, 1, 28, 28), (2, 3, 28, 28)]:
        with pytest.raises(ValueError, match=re.escape(f"images must be a batch (N, 1, H, W), (N, H, W) or one (H, W) "
                                                       f"image for this 1-channel model, got shape {shape}")):
            one_channel(torch.rand(shape))


def test_ordinary_builder_parameters_with_defaults_are_options(monkeypatch):
    # Only keyword-only parameters counted: "model 'tiny2' does not take option(s) width; it takes: (none)"
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))  # the registration ends with the test

    @register("tiny2")
    def tiny2(num_classes, in_channels, image_size, width=1.0, hidden=None):
        return make_cnn("tiny2", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                        channels=[8, 16], kernel_sizes=[3, 3], paddings=[1, 1], width=width, hidden=hidden or [])

    assert model_options("tiny2") == ["width", "hidden"]
    assert build_model("tiny2", **ModelConfig(name="tiny2", width=0.5).options()).features[0].out_channels == 4
    assert build_model("tiny2", width=None).features[0].out_channels == 8  # unset: the builder's default holds
