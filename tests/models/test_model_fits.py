"""Options that make a model too small for its images or too large for the machine: the error names values
that fit, and a model too large is refused before its weights are written."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import torch

from mnistlab.errors import ConfigError
from mnistlab.models import build_model


@pytest.mark.parametrize("name, options", [
    ("cnn", {"stride": 5}),
    ("lenet", {"kernel_size": 13}),
    ("lenet", {"kernel_size": 5000}),  # a kernel that no width fits: refused before its 6.4 GB of weights
    ("cnn", {"kernel_size": 29, "padding": 0}),
    ("fast", {"crop": 12}),
    ("cnn", {"crop": 13}),
    ("fast", {"channels": [8, 16, 32, 64]}),
    ("vgg", {"channels": [8, "M"] * 6}),
    ("alexnet", {"channels": [8, "M"] * 5}),
    ("lenet5", {"channels": [6, 16, 32]}),
    ("cnn", {"stride": 2**40}),
    ("fast", {"image_size": (8, 8)}),
])
def test_a_model_too_small_for_its_images_names_option_values_that_fit(name, options):
    # The message named the layer that could not run and said "a smaller kernel or stride": which value, the
    # user had to find by trial, one training start at a time.
    with pytest.raises(ConfigError, match="does not fit") as caught:
        build_model(name, **options)
    message = str(caught.value)
    assert "\n" not in message
    fits = re.search(r"; it fits with (.*) \((each alone, )?the other options as set\)$", message)
    assert fits, message
    for key, value in re.findall(r"model\.(\w+) = (\[[^]]*\]|\d+)", fits.group(1)):
        build_model(name, **{**options, key: json.loads(value)})  # each one builds, the others as set


def test_a_model_whose_weights_exceed_the_free_memory_is_refused_before_they_are_written(monkeypatch):
    # The allocator refuses only a tensor larger than the machine: weights of 20 GB in tensors of a few GB
    # each were reserved and initialized one by one until the machine swapped and the OOM killer came.
    fit = importlib.import_module("mnistlab.training.fit")  # (the package's `fit` is the function)
    monkeypatch.setattr(fit, "available_memory", lambda: 32 * 2**20)
    initialized = []
    real = torch.nn.Linear.reset_parameters
    monkeypatch.setattr(torch.nn.Linear, "reset_parameters",
                        lambda self: (initialized.append(self.out_features), real(self))[1])
    with pytest.raises(ConfigError, match=r"model 'cnn' is too large to build with \{'hidden': \[8192\]\}: its "
                                          r"weights and its dry run's input need more than 4\d MiB, but this "
                                          r"machine has 32 MiB free; lower model.width"):
        build_model("cnn", hidden=[8192])  # 1568 x 8192 weights: 49 MiB
    assert 8192 not in initialized  # refused once reserved, before its initialization wrote it
    assert build_model("cnn", hidden=[512]).classifier[0].out_features == 512  # 3 MiB: built as before
