"""Audit 151: tests written to kill mutants of the model zoo (mnistlab/models) that the other model tests let live.

Each test asserts the models' real behaviour against a hand computation or torch's own layers: the option checks
and their messages, the layers each option makes, and the MAC / parameter counts of summary.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnistlab.errors import ConfigError
from mnistlab.models import build_model
from mnistlab.models.base import MapTooSmall
from mnistlab.models.summary import count_macs, count_parameters, format_layer_table, layer_table


@pytest.mark.parametrize("name, channels", [("cnn", [0, 32]), ("fast", [24, 0]), ("resnet18", [8, 0, 8, 8])])
def test_a_zero_kernel_count_is_refused_not_rounded_up_to_one(name, channels):
    # scaled() makes any count at least 1: a 0 let through the check became a silent 1-kernel conv
    with pytest.raises(ConfigError, match="channels entries must be positive integers, got 0"):
        build_model(name, channels=channels)


def test_a_stride_of_zero_is_an_option_error_not_a_map_too_small():
    # a stride of 0 let through reached the dry run, which blamed the image size ("does not fit 28x28 images")
    with pytest.raises(ConfigError, match="kernel_size and stride must be at least 1, got 5 and 0") as info:
        build_model("cnn", stride=0)
    assert not isinstance(info.value, MapTooSmall)


def test_a_grouped_conv_counts_in_channels_over_groups_macs_per_output():
    # depthwise 3x3 on 4 channels of 5x5: 8 * 3 * 3 outputs, each a dot product of 1 channel x 9 taps
    conv = nn.Conv2d(4, 8, 3, groups=4)
    assert count_macs(conv, (4, 5, 5)) == 8 * 3 * 3 * 9
    assert count_macs(nn.Conv2d(4, 8, 3, groups=2), (4, 5, 5)) == 8 * 3 * 3 * 2 * 9


class _TwiceConv(nn.Module):
    """One conv applied twice: 8x8 -> 6x6 -> 4x4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_a_layer_called_twice_keeps_its_first_output_shape_and_adds_both_costs():
    (row,) = [r for r in layer_table(_TwiceConv(), (1, 8, 8)) if r["name"] == "conv"]
    assert row["output_shape"] == (1, 6, 6)
    assert row["macs"] == 6 * 6 * 9 + 4 * 4 * 9


def test_the_table_totals_are_the_models_parameters_and_macs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 4))
    text = format_layer_table(layer_table(model, (1, 5, 5)))
    # conv: 2*9 weights + 2 biases, 2*3*3 outputs x 9; linear: 18*4 + 4, 4 outputs x 18
    assert text.splitlines()[-1] == "total: 96 parameters, 234 MACs per image"
    assert count_parameters(model) == 96


def test_cnn_pads_an_even_kernel_by_half_of_it_so_the_map_grows_by_one():
    net = build_model("cnn", kernel_size=4)
    assert net.features[0].padding == (2, 2)
    # 28 + 4 - 4 + 1 = 29 -> pool 14 -> 14 + 4 - 4 + 1 = 15 -> pool 7
    assert net.num_features == 32 * 7 * 7


@pytest.mark.parametrize("size, pads, features", [((27, 27), (3, 3), 16 * 5 * 5), ((31, 28), (1, 2), 16 * 5 * 5)])
def test_lenet5_pads_an_odd_side_up_to_33(size, pads, features):
    net = build_model("lenet5", image_size=size)
    assert net.features[0].padding == pads
    assert net.num_features == features


def test_resnet_dropout_goes_before_its_one_linear_layer():
    net = build_model("resnet18", width=0.125, dropout=0.3)
    kinds = [type(m) for m in net.classifier]
    assert kinds == [nn.Dropout, nn.Linear]
    assert net.classifier[0].p == 0.3


def test_width_rounds_each_kernel_count_to_the_nearest_whole_number():
    net = build_model("cnn", width=0.6)  # 16 * 0.6 = 9.6 -> 10, 32 * 0.6 = 19.2 -> 19
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [10, 19]


def test_relu_with_average_pooling_runs_relu_first():
    from mnistlab.models.cnn import make_cnn

    # ReLU and a max-pool commute, ReLU and an average pool do not: avgpool(relu(x)) is the textbook block
    net = make_cnn("t", num_classes=3, in_channels=1, image_size=(8, 8), channels=[2], kernel_sizes=[3],
                   paddings=[1], pool=nn.AvgPool2d)
    assert [type(m) for m in net.features] == [nn.Conv2d, nn.ReLU, nn.AvgPool2d]
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    conv = net.features[0]
    assert torch.allclose(net.features(x), nn.functional.avg_pool2d(torch.relu(conv(x)), 2))


def test_a_cnn_kernel_whose_outer_taps_see_only_padding_is_refused_at_the_boundary():
    # padding 28 on 28 pixels: a 56-wide kernel's 29 positions reach every tap to data, a 57-wide one's taps 0
    # and 56 only ever see the padding's zeros
    assert build_model("cnn", kernel_size=56, channels=[2, 2]).features[0].padding == (28, 28)
    with pytest.raises(MapTooSmall, match="outer taps would only ever see the padding's zeros"):
        build_model("cnn", kernel_size=57, channels=[2, 2])


def test_a_first_kernel_wider_than_the_input_says_so():
    with pytest.raises(MapTooSmall, match="29x29 kernel is larger than the 28x28 input it slides over"):
        build_model("lenet", kernel_size=29)


@pytest.mark.parametrize("name, hidden, kinds", [
    # the original AlexNet: dropout before every linear layer but the last
    ("alexnet", [16, 8], "D L R D L R L"),
    # VGG: dropout after each hidden layer, none on the conv features
    ("vgg11", [16, 8], "L R D L R D L"),
    ("vgg11", [16], "L R D L"),
    # no hidden layer: the dropout set goes on the features, the only place left
    ("vgg11", [], "D L"),
])
def test_the_heads_place_dropout_as_documented(name, hidden, kinds):
    net = build_model(name, width=0.0625, hidden=hidden, dropout=0.5)
    letter = {nn.Dropout: "D", nn.Linear: "L", nn.ReLU: "R"}
    assert " ".join(letter[type(m)] for m in net.classifier) == kinds
    assert all(m.p == 0.5 for m in net.classifier if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("name, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_each_residual_block_starts_as_its_shortcut(name, last_bn):
    from mnistlab.models.resnet import BasicBlock, Bottleneck

    net = build_model(name, width=0.0625).eval()
    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    torch.manual_seed(0)
    for b in blocks:  # the residual branch is zero, so the block is relu(shortcut(x))
        x = torch.randn(2, b.conv1.in_channels, 6, 6)
        with torch.no_grad():
            assert torch.equal(b(x), torch.relu(b.shortcut(x)))



def test_a_map_too_small_after_a_crop_names_the_cropped_size():
    # crop 11 leaves 28 - 2 * 11 = 6 pixels a side: the first 5x5 conv fits, the later layers do not
    with pytest.raises(MapTooSmall, match=r"does not fit 28x28 images cropped to 6x6 \(crop=11\): its layers shrink"):
        build_model("fast", crop=11)
