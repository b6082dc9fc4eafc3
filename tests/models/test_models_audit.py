"""Edges of the model zoo found in an audit: loading weights of another crop, the sizes build_model is given,
non-finite normalization statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnistlab.errors import ConfigError
from mnistlab.models import build_model


def test_plain_load_state_dict_refuses_weights_of_another_crop():
    # fast crops 1 and 2 give the same 4x4 maps, so every tensor fits: only crop_pixels tells them apart
    torch.manual_seed(0)
    trained = build_model("fast", width=0.25, crop=2)
    other = build_model("fast", width=0.25, crop=1)
    assert other.num_features == trained.num_features
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"cropped by 2 pixels a side, but this model crops 1; .*crop=2"):
            other.load_state_dict(trained.state_dict(), strict=strict)
    uncropped = build_model("fast", width=0.25)  # no crop_pixels of its own: strict=False skipped the key
    with pytest.raises(RuntimeError, match="this model crops 0"):
        uncropped.load_state_dict(trained.state_dict(), strict=False)
    # The same crop still loads, and gives the trained model's outputs.
    same = build_model("fast", width=0.25, crop=2)
    same.load_state_dict(trained.state_dict())
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(same.eval()(x), trained.eval()(x))


@pytest.mark.parametrize(
    "sizes",
    [
        {"image_size": 28},
        {"image_size": (28, 28, 1)},
        {"image_size": (28.0, 28.0)},
        {"num_classes": 2.5},
        {"num_classes": True},
        {"in_channels": 1.0},
    ],
    ids=str,
)
def test_build_model_sizes_of_the_wrong_kind_are_one_config_error(sizes):
    with pytest.raises(ConfigError, match=r"num_classes, in_channels and image_size \(height, width\) must be "
                                          r"positive whole numbers"):
        build_model("cnn", **sizes)


def test_build_model_takes_sizes_as_list_torch_size_or_numpy_integers():
    for kwargs in [{"image_size": [20, 24]}, {"image_size": torch.Size([20, 24])},
                   {"image_size": np.array([20, 24]), "num_classes": np.int64(3)}]:
        net = build_model("cnn", width=0.25, **kwargs)
        assert net.image_size == (20, 24) and all(type(s) is int for s in net.image_size)
        assert net(torch.rand(1, 1, 20, 24)).shape[1] == int(kwargs.get("num_classes", 10))


@pytest.mark.parametrize("mean,std", [((math.nan,), (1.0,)), ((0.1,), (math.inf,))])
def test_non_finite_normalization_statistics_are_refused(mean, std):
    # mean NaN made every logit NaN; std inf made every input 0, so one prediction for every image
    with pytest.raises(ConfigError, match="mean/std must be finite numbers"):
        build_model("cnn", width=0.25, mean=mean, std=std)
