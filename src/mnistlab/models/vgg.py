"""VGG (Simonyan & Zisserman 2014): stacks of 3x3 convs with batch norm, 2x2 max-pools, an MLP head.

The standard layouts A, B, D, E are ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``;
``vgg`` builds a network from the user's own list (``channels = [32, "M", 64, "M"]``).
The built-in layouts pool five times, made for 224x224 images; on small images
the pools that would shrink the map below 1x1 are dropped (see ``vgg_stack``).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError
from ._layers import Channel, check_options, classifier_head, vgg_stack
from ._registry import register
from .base import Net

VGG_CFGS: dict[str, list[Channel]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # A
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # D
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],  # E
}
# The paper's head is 4096-4096 on a 7x7x512 map (224x224 input). On 28x28 the
# map is 1x1x512, so 512 flattened features; a 4096-wide head on 512 inputs would
# add ~20M parameters for no gain, so the head is as wide as the last conv stage.
VGG_HIDDEN = (512, 512)


def make_vgg(
    name: str,
    cfg: Sequence[Channel],
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    fit_pools: bool,
    kernel_size: int = 3,
    width: float = 1.0,
    hidden: Sequence[int] = VGG_HIDDEN,
    dropout: float = 0.5,
    batch_norm: bool = True,
) -> Net:
    """A VGG network from a layout of kernel counts and "M"; ``fit_pools`` drops pools the image is too small for.

    >>> net = make_vgg("tiny", [8, "M", 16, "M"], num_classes=10, in_channels=1, image_size=(28, 28),
    ...                fit_pools=False, hidden=[32])
    >>> net.num_features                         # 16 kernels x 7 x 7
    784
    """
    check_options(name, channels=cfg, allow_pool=True, width=width, hidden=hidden, dropout=dropout,
                  kernel_size=kernel_size)
    features = vgg_stack(in_channels, cfg, image_size=image_size, kernel_size=kernel_size, width=width,
                         batch_norm=batch_norm, fit_pools=fit_pools)
    net = Net(
        features,
        # as in the paper: dropout after each hidden layer, none on the conv features; with no hidden
        # layer, on the features before the logits (the only place left), so that a dropout set still acts
        lambda n: classifier_head(n, hidden, num_classes, dropout=dropout, dropout_first=not hidden),
        in_channels=in_channels,
        image_size=image_size,
        name=name,
    )
    # NHWC trained small `vgg` layouts 1.2-1.6x faster on a CPU, fp32 and bf16 (benchmarks/vgg_layout.py),
    # and vgg11-16 1.03-1.05x (vgg19 0.95x; benchmarks/roofline.txt)
    net.channels_last_on_cpu = True
    return net


def _standard(name: str, **kw) -> Net:
    return make_vgg(name, VGG_CFGS[name], fit_pools=True, **kw)


@register("vgg11")
def vgg11(*, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0,
          hidden: Sequence[int] = VGG_HIDDEN, dropout: float = 0.5, batch_norm: bool = True) -> Net:
    """VGG-11 (layout A: 8 convs), batch norm, head 512-512 (see VGG_HIDDEN)."""
    return _standard("vgg11", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     width=width, hidden=hidden, dropout=dropout, batch_norm=batch_norm)


@register("vgg13")
def vgg13(*, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0,
          hidden: Sequence[int] = VGG_HIDDEN, dropout: float = 0.5, batch_norm: bool = True) -> Net:
    """VGG-13 (layout B: 10 convs), batch norm, head 512-512 (see VGG_HIDDEN)."""
    return _standard("vgg13", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     width=width, hidden=hidden, dropout=dropout, batch_norm=batch_norm)


@register("vgg16")
def vgg16(*, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0,
          hidden: Sequence[int] = VGG_HIDDEN, dropout: float = 0.5, batch_norm: bool = True) -> Net:
    """VGG-16 (layout D: 13 convs), batch norm, head 512-512 (see VGG_HIDDEN)."""
    return _standard("vgg16", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     width=width, hidden=hidden, dropout=dropout, batch_norm=batch_norm)


@register("vgg19")
def vgg19(*, num_classes: int, in_channels: int, image_size: tuple[int, int], width: float = 1.0,
          hidden: Sequence[int] = VGG_HIDDEN, dropout: float = 0.5, batch_norm: bool = True) -> Net:
    """VGG-19 (layout E: 16 convs), batch norm, head 512-512 (see VGG_HIDDEN)."""
    return _standard("vgg19", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                     width=width, hidden=hidden, dropout=dropout, batch_norm=batch_norm)


@register("vgg")
def vgg(*, num_classes: int, in_channels: int, image_size: tuple[int, int], channels: Sequence[Channel] | None = None,
        kernel_size: int = 3, width: float = 1.0, hidden: Sequence[int] = VGG_HIDDEN, dropout: float = 0.5,
        batch_norm: bool = True) -> Net:
    """A VGG-style network from your own layout, placed exactly as written (no pool is dropped).

    ``channels`` is required: conv kernel counts and "M" for a 2x2 max-pool, e.g.
    ``[32, 32, "M", 64, 64, "M", 128, "M"]``. A layout that pools the image below
    1x1 is a ConfigError naming the image size.
    """
    if channels is None:
        raise ConfigError(
            'model "vgg" needs a layout: set model.channels to conv kernel counts and "M" (2x2 max-pool), '
            'e.g. channels = [32, 32, "M", 64, 64, "M"]; or use vgg11, vgg13, vgg16 or vgg19'
        )
    return make_vgg("vgg", channels, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                    fit_pools=False, kernel_size=kernel_size, width=width, hidden=hidden, dropout=dropout,
                    batch_norm=batch_norm)
