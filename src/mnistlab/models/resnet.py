"""ResNet (He et al. 2015) for small images: a 3x3 stem without max-pool, four residual stages.

The ImageNet stem (7x7 stride-2 conv and a max-pool) would cut a 28x28 digit to
7x7 before the first block; as in the usual CIFAR versions it is a 3x3 stride-1
conv here, so the stages see 28 -> 28 -> 14 -> 7 -> 4 (strides 1, 2, 2, 2).
``features`` ends with a global average pool, so the classifier sees one vector
of ``channels[-1] * expansion`` values whatever the image size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ._layers import check_options, classifier_head
from ._registry import register
from .base import Net, scaled

RESNET_CHANNELS = (64, 128, 256, 512)  # stage widths (bottleneck stages output 4x as many)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity where the shapes match, else a strided 1x1 conv + BN (the paper's option B)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.relu2 = nn.ReLU()  # a module of its own (not relu1 called twice) so layer tables list both

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut (ResNet-50/101/152).

    The stride sits on the 3x3 conv (torchvision's "ResNet v1.5"), not on the
    first 1x1 conv as in the paper: slightly more accurate for the same size.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _init_weights(features: nn.Module) -> None:
    """He init for convs; BN at scale 1, except the last BN of each block at 0.

    Zeroing the last BN makes every residual branch start at zero, so each block
    starts as its shortcut (the identity, except where a 1x1 projection changes
    the shape), which lets deep ResNets train stably from the first steps
    (Goyal et al. 2017).
    """
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in features.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)


def make_resnet(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    blocks_per_stage: Sequence[int],
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[int] = RESNET_CHANNELS,
    width: float = 1.0,
    dropout: float = 0.0,
) -> Net:
    """A ResNet: stem, one stage per entry of ``blocks_per_stage`` (strides 1, 2, 2, ...), global average pool.

    ``features`` is ``Sequential(stem, layer1..layerN, pool)``; the classifier is
    one linear layer (after dropout when ``dropout > 0``).

    >>> net = make_resnet("tiny", BasicBlock, [1, 1], num_classes=10, in_channels=1, image_size=(28, 28),
    ...                   channels=[8, 16])
    >>> net.num_features
    16
    """
    check_options(name, channels=channels, num_channels=len(blocks_per_stage), width=width, dropout=dropout)
    widths = [scaled(c, width) for c in channels]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                           nn.BatchNorm2d(widths[0]), nn.ReLU())
    )
    current = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks_per_stage)):
        stage = []
        for j in range(n):
            stage.append(block(current, w, stride=(1 if i == 0 or j > 0 else 2)))
            current = w * block.expansion
        layers[f"layer{i + 1}"] = nn.Sequential(*stage)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    features = nn.Sequential(layers)
    _init_weights(features)
    net = Net(
        features,
        lambda n: classifier_head(n, [], num_classes, dropout=dropout),
        in_channels=in_channels,
        image_size=image_size,
        name=name,
    )
    # NHWC trains ResNet-18 1.1x and ResNet-50 1.1-1.24x as fast as NCHW on the CPUs measured
    # (benchmarks/roofline.txt, roofline_epyc-avx2.txt)
    net.channels_last_on_cpu = True
    return net


@register("resnet18")
def resnet18(*, num_classes: int, in_channels: int, image_size: tuple[int, int],
             channels: Sequence[int] = RESNET_CHANNELS, width: float = 1.0, dropout: float = 0.0) -> Net:
    """ResNet-18: BasicBlocks [2, 2, 2, 2], stage widths 64, 128, 256, 512, small-image stem."""
    return make_resnet("resnet18", BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, channels=channels, width=width, dropout=dropout)


@register("resnet50")
def resnet50(*, num_classes: int, in_channels: int, image_size: tuple[int, int],
             channels: Sequence[int] = RESNET_CHANNELS, width: float = 1.0, dropout: float = 0.0) -> Net:
    """ResNet-50: Bottlenecks [3, 4, 6, 3] (expansion 4: 2048 features), small-image stem."""
    return make_resnet("resnet50", Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, channels=channels, width=width, dropout=dropout)
