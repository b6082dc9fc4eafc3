"""LeNet-style networks: two conv + pool stages and a stack of linear layers."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ._layers import check_padding
from ._registry import register
from .base import Net
from .cnn import make_cnn

LENET5_INPUT = 32  # LeCun et al. (1998) fed 32x32 images: MNIST's 28x28 digits padded by 2 pixels


@register("lenet")
def lenet(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[int] = (64, 128),
    kernel_size: int = 3,
    padding: int = 0,
    width: float = 1.0,
    hidden: Sequence[int] = (512, 1024),
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_after_pool: bool = False,
    crop: int = 0,
) -> Net:
    """A wide LeNet: 3x3 convs of 64 and 128 kernels, each ReLU + 2x2 max-pool, then linear 512, 1024, classes.

    The convs are unpadded ("valid") as in LeNet: 28x28 -> 26 -> 13 -> 11 -> 5.
    """
    check_padding("lenet", padding, kernel_size)
    n = len(channels)
    return make_cnn(
        "lenet", num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels,
        kernel_sizes=[kernel_size] * n, paddings=[padding] * n, width=width, hidden=hidden,
        dropout=dropout, batch_norm=batch_norm, bn_after_pool=bn_after_pool, crop=crop,
    )


@register("lenet5")
def lenet5(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[int] = (6, 16),
    kernel_size: int = 5,
    padding: int | None = None,
    width: float = 1.0,
    hidden: Sequence[int] = (120, 84),
    dropout: float = 0.0,
) -> Net:
    """LeNet-5 (LeCun et al. 1998): 5x5 convs of 6 and 16 kernels, tanh, 2x2 average pooling, linear 120, 84.

    Faithful where it matters for the shapes and the activation: tanh everywhere
    (not ReLU) and average pooling, as in the paper. Simplified as usual: the
    subsampling layers have no trainable scale and bias, C3 connects to all six
    maps (not the paper's partial table), C5 is a linear layer (the same thing on
    the 5x5 maps), and the output is a linear layer instead of RBF units.

    The paper fed 32x32 images (28x28 MNIST digits padded by 2), so by default the
    first conv pads smaller images up to 32x32: padding 2 on 28x28, 0 on 32x32,
    6 on 20x20 (per side, per axis; an odd side is padded to 33). That keeps the
    paper's 28x28 -> 14 -> 10 -> 5 feature maps. ``padding`` overrides this for
    the first conv; later convs are unpadded.
    """
    if padding is not None:  # (its own rule pads images below 24x24 by more: to the paper's 32x32)
        check_padding("lenet5", padding, kernel_size)
    first = padding if padding is not None else tuple(max(0, (LENET5_INPUT - s + 1) // 2) for s in image_size)
    return make_cnn(
        "lenet5", num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels,
        kernel_sizes=[kernel_size] * len(channels), paddings=[first] + [0] * (len(channels) - 1), width=width,
        hidden=hidden, dropout=dropout, activation=nn.Tanh, pool=nn.AvgPool2d,
    )
