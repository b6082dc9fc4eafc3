"""Audit of the zoo's sizes: the counts `mnistlab models` prints agree with independent ones, and a kernel whose
taps could never see a pixel is refused."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from mnistlab.cli import main
from mnistlab.errors import ConfigError
from mnistlab.models import build_model, count_macs, count_parameters, format_layer_table, layer_table


def independent_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """MACs from hooks on every Conv2d and Linear, leaf or not: outputs x in/groups x kernel area, in x out."""
    total = 0

    def hook(m: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += output[0].numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += output[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for h in handles:
        h.remove()
    return total


def test_weight_normed_layers_keep_their_macs_and_rows():
    # A bias-free conv under weight_norm has no parameter of its own and is no leaf: it had no row, and its
    # MACs were dropped (72 of 396 counted), while its parametrization was listed with the weight's shape.
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(36, 2))
    assert count_macs(plain, (1, 5, 5)) == 396
    normed = nn.Sequential(weight_norm(nn.Conv2d(1, 4, 3, bias=False)), nn.Flatten(),
                           spectral_norm(nn.Linear(36, 2)))
    assert count_macs(normed, (1, 5, 5)) == 396
    rows = layer_table(normed, (1, 5, 5))
    assert [r["name"] for r in rows] == ["0", "1", "2"]
    assert [r["output_shape"] for r in rows] == [(4, 3, 3), (36,), (2,)]
    assert [r["params"] for r in rows] == [4 + 36, 0, 2 + 72]  # weight_norm's g and v; the linear's bias and weight
    assert sum(r["params"] for r in rows) == count_parameters(normed)


def test_a_weight_normed_resnet_is_counted_as_the_plain_one():
    model = build_model("resnet18", width=0.125)
    macs, params = count_macs(model), count_parameters(model)
    assert macs == independent_macs(model, (1, 28, 28))
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.Conv2d):  # every conv of a ResNet is bias-free
                setattr(m, child_name, weight_norm(child))
    assert count_macs(model) == macs == independent_macs(model, (1, 28, 28))
    table = format_layer_table(layer_table(model))
    assert "parametrizations" not in table and "ParametrizationList" not in table
    norms = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Conv2d))  # weight_norm's g
    assert count_parameters(model) == params + norms
    assert table.endswith(f"total: {count_parameters(model):,} parameters, {macs:,} MACs per image")


def test_tied_weights_count_once_in_the_layer_table():
    first = nn.Linear(4, 4)
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(4, 4, bias=False))
    model[2].weight = first.weight
    rows = layer_table(model, (4,))
    assert sum(r["params"] for r in rows) == count_parameters(model) == 20
    assert sum(r["macs"] for r in rows) == 32


@pytest.mark.parametrize("name", ["cnn", "fast", "lenet", "lenet5", "resnet18", "vgg11", "alexnet"])
def test_models_table_counts_match_independent_ones(name):
    model = build_model(name, width=0.125)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_macs(model) == independent_macs(model, (1, 28, 28))


@pytest.mark.parametrize("name, options, fits", [
    ("cnn", {"kernel_size": 301}, 56),     # 28 + 150 of padding < 301: built 48 M parameters before
    ("cnn", {"kernel_size": 57}, 56),      # the first kernel that has a dead tap on 28x28 at padding k // 2
    ("lenet5", {"kernel_size": 31}, 10),   # pads 28x28 by 2: 30 < 31
])
def test_a_first_kernel_whose_outer_taps_never_see_a_pixel_is_refused(name, options, fits):
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"would only ever see the padding's zeros; use a smaller kernel; "
                                          rf"it fits with model.kernel_size = {fits} \(the other options as set\)"):
        build_model(name, **options)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("kernel, all_see_pixels", [(56, True), (57, False)])
def test_the_boundary_is_where_a_tap_of_the_first_conv_stops_seeing_pixels(kernel, all_see_pixels):
    # cnn pads k // 2: at 56 on 28x28 every tap of the first conv meets some pixel (so each can learn), at 57
    # the outer ones meet only padding; 56 builds, 57 is refused
    conv = nn.Conv2d(1, 1, kernel, padding=kernel // 2, bias=False)
    conv(torch.rand(1, 1, 28, 28) + 0.5).sum().backward()
    assert bool((conv.weight.grad[0, 0] != 0).all()) is all_see_pixels
    if all_see_pixels:
        assert build_model("cnn", kernel_size=kernel, channels=[2, 2]).features[0].kernel_size == (kernel, kernel)
    else:
        with pytest.raises(ConfigError, match="only ever see the padding's zeros"):
            build_model("cnn", kernel_size=kernel, channels=[2, 2])


def test_the_cli_refuses_a_huge_cnn_kernel_in_one_line(capsys):
    start = time.monotonic()
    assert main(["models", "--details", "cnn", "--set", "model.kernel_size=2001"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2001x2001 kernel is larger than the input plus its padding on one side" in err
    assert time.monotonic() - start < 20  # its dry forward ran for minutes


def test_numpy_numbers_are_taken_as_the_options_they_stand_for():
    # kernel_size=np.int64(3) was a TypeError inside the builder, crop=np.int64(1) "crop must be a whole number"
    # and channels=[np.int64(8)] "entries must be positive integers": the checked values were thrown away
    import numpy as np

    from mnistlab.models import build_model
    from mnistlab.models.summary import count_parameters

    plain = build_model("cnn", kernel_size=3, crop=1, channels=[8, 16], width=0.5)
    numpy = build_model("cnn", kernel_size=np.int64(3), crop=np.int64(1), channels=[np.int64(8), np.int64(16)],
                        width=np.float32(0.5))
    assert count_parameters(numpy) == count_parameters(plain) and numpy.crop == plain.crop == 1
