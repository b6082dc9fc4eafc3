"""AlexNet-style network for small images: five 5x5 convs with batch norm and three max-pools, a 4096-4096 head."""

from __future__ import annotations

from typing import Sequence

from ._layers import Channel, check_options, classifier_head, vgg_stack
from ._registry import register
from .base import Net

ALEXNET_CFG: tuple[Channel, ...] = (64, "M", 128, "M", 256, 512, 1024, "M")


@register("alexnet")
def alexnet(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[Channel] | None = None,
    width: float = 1.0,
    hidden: Sequence[int] = (4096, 4096),
    dropout: float = 0.5,
    batch_norm: bool = True,
) -> Net:
    """5x5 convs (padding 2) of 64, M, 128, M, 256, 512, 1024, M kernels, each BN + ReLU; head as AlexNet's.

    The head is the original's: dropout, linear 4096, ReLU, dropout, linear 4096,
    ReLU, linear to the classes. ``channels`` takes a layout like the default (kernel
    counts and "M"); a layout of your own is placed as written, while the default
    one drops a pool when the map is already below 2x2 (so it also fits images
    smaller than 8x8; 28x28 keeps all three: 28 -> 14 -> 7 -> 3).
    """
    cfg = ALEXNET_CFG if channels is None else channels
    check_options("alexnet", channels=cfg, allow_pool=True, width=width, hidden=hidden, dropout=dropout)
    features = vgg_stack(in_channels, cfg, image_size=image_size, kernel_size=5, width=width,
                         batch_norm=batch_norm, fit_pools=channels is None)
    return Net(
        features,
        lambda n: classifier_head(n, hidden, num_classes, dropout=dropout, dropout_last=False),
        in_channels=in_channels,
        image_size=image_size,
        name="alexnet",
    )
