"""Small plain CNNs: conv -> 2x2 max-pool -> ReLU blocks (the textbook conv -> ReLU -> pool, with the two
that commute swapped; see conv_pool_stack), then a linear classifier.

``cnn`` is the textbook two-layer MNIST network; ``fast`` is the speed-oriented
default model of ``mnistlab train``.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import ConfigError

from ._layers import Activation, check_options, check_padding, classifier_head, conv_pool_stack
from ._registry import register
from .base import MapTooSmall, Net, scaled


def make_cnn(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[int],
    kernel_sizes: Sequence[int],
    paddings: Sequence[int | tuple[int, int]],
    stride: int = 1,
    width: float = 1.0,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_after_pool: bool = False,
    activation: Activation = nn.ReLU,
    pool: type[nn.Module] = nn.MaxPool2d,
    crop: int = 0,
) -> Net:
    """(conv -> [BN] -> activation -> 2x2 pool; with ReLU and max-pooling the pool first) per entry of
    ``channels`` (see :func:`~mnistlab.models._layers.conv_pool_stack`), then linear ``hidden`` layers.

    ``kernel_sizes`` and ``paddings`` hold one entry per conv. ``crop`` cuts that
    many pixels from each side of the input first (see :class:`~mnistlab.models.base.Net`).
    ``bn_after_pool`` (with ``batch_norm``) builds conv -> pool -> BN -> activation
    instead; see :func:`~mnistlab.models._layers.conv_pool_stack` for the order of the layers.

    >>> net = make_cnn("tiny", num_classes=10, in_channels=1, image_size=(28, 28), channels=[4],
    ...                kernel_sizes=[3], paddings=[1])
    >>> net.num_features                         # 4 kernels x 14 x 14 after one pool
    784
    """
    flat_paddings = [q for p in paddings for q in ((p,) if isinstance(p, int) else p)]
    check_options(name, channels=channels, width=width, hidden=hidden, dropout=dropout,
                  kernel_size=min(kernel_sizes, default=1), stride=stride, padding=min(flat_paddings, default=0))
    if bn_after_pool and not batch_norm:
        raise ConfigError(f"model {name!r}: bn_after_pool moves the batch norm after the pool; "
                          "it needs batch_norm = true")
    _check_first_kernel(name, image_size, crop, kernel_sizes[0], paddings[0])
    features = conv_pool_stack(
        in_channels, [scaled(c, width) for c in channels], kernel_sizes, paddings,
        stride=stride, batch_norm=batch_norm, bn_after_pool=bn_after_pool, activation=activation, pool=pool,
    )
    net = Net(
        features,
        lambda n: classifier_head(n, hidden, num_classes, dropout=dropout, activation=activation),
        in_channels=in_channels,
        image_size=image_size,
        name=name,
        crop=crop,
    )
    # cnn, fast, lenet: 1.4-1.7x the training rate of NCHW; lenet5 (tanh, average pooling) about the same
    # either way (benchmarks/roofline.txt)
    net.channels_last_on_cpu = True
    return net


def _check_first_kernel(name: str, image_size: tuple[int, int], crop: int, kernel: int,
                        padding: int | tuple[int, int]) -> None:
    """A MapTooSmall for a first conv wider than its (cropped, padded) input, or than the input plus one side's
    padding (taps that never see a pixel; see below), before any layer is made: the
    weights of every conv were allocated and initialized before the dry run found it (lenet at kernel_size
    5000: 6.4 GB written, 9 s, then "too large" for a kernel that cannot fit at any width)."""
    pads = (padding, padding) if isinstance(padding, int) else padding
    if 2 * crop >= min(image_size):  # a crop that leaves nothing: Net says so
        return
    (h, w), cut = image_size, 2 * crop
    images = f"{h}x{w} images" + (f" cropped to {h - cut}x{w - cut} (crop={crop})" if crop else "")
    sides = [s - cut + 2 * p for s, p in zip(image_size, pads)]
    if kernel > min(sides):
        raise MapTooSmall(f"model {name} does not fit {images}: its first conv's {kernel}x{kernel} kernel is larger "
                          f"than the {sides[0]}x{sides[1]} input it slides over (padding "
                          f"{pads[0] if pads[0] == pads[1] else pads}); use a smaller kernel"
                          + (", or a smaller crop" if crop else ""))
    # A kernel wider than the input plus one side's padding has taps that never see a pixel, for any output
    # (its last tap is past the input already at the first one). cnn pads k // 2, so it built any kernel, with
    # mostly dead weights (kernel_size 301: 48 M parameters and 10 G MACs an image, where 29 K and 2.8 M were),
    # and at 2001 its dry forward ran for minutes. A valid conv (padding 0) is refused by the check above.
    reach = [s - cut + p for s, p in zip(image_size, pads)]
    if kernel > min(reach):
        raise MapTooSmall(f"model {name} does not fit {images}: its first conv's {kernel}x{kernel} kernel is larger "
                          f"than the input plus its padding on one side ({reach[0]}x{reach[1]}), so its outer taps "
                          "would only ever see the padding's zeros; use a smaller kernel"
                          + (", or a smaller crop" if crop else ""))


@register("cnn")
def cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[int] = (16, 32),
    kernel_size: int = 5,
    stride: int = 1,
    padding: int | None = None,
    width: float = 1.0,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_after_pool: bool = False,
    crop: int = 0,
) -> Net:
    """Two 5x5 convs (16, 32 kernels, "same" padding), each followed by a 2x2 max-pool and ReLU, one linear layer.

    ``padding`` defaults to ``kernel_size // 2``, so at ``stride`` 1 convs with an odd kernel keep the image
    size (an even kernel makes it one pixel larger); a larger stride divides it.
    """
    if padding is not None:
        check_padding("cnn", padding, kernel_size)
    padding = kernel_size // 2 if padding is None else padding
    net = make_cnn(
        "cnn", num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels,
        kernel_sizes=[kernel_size] * len(channels), paddings=[padding] * len(channels), stride=stride,
        width=width, hidden=hidden, dropout=dropout, batch_norm=batch_norm,
        bn_after_pool=bn_after_pool, crop=crop,
    )
    net.onednn_eval_on_cpu = True  # see Net.onednn_eval_on_cpu; lenet, built the same way, was not faster in every run
    return net


@register("fast")
def fast(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    channels: Sequence[int] = (24, 32),
    kernel_size: int = 5,
    width: float = 1.0,
    hidden: Sequence[int] = (256,),
    dropout: float = 0.0,
    batch_norm: bool = False,
    bn_after_pool: bool = False,
    crop: int = 0,
) -> Net:
    """The default model: conv 24 5x5 -> pool -> conv 32 3x3 -> pool -> linear 256 -> classes (no padding).

    ``kernel_size`` sets the first conv only; later convs are 3x3 (the first one
    sees raw pixels and profits from a wider view; the later ones are cheaper small).
    """
    net = make_cnn(
        "fast", num_classes=num_classes, in_channels=in_channels, image_size=image_size, channels=channels,
        kernel_sizes=[kernel_size] + [3] * (len(channels) - 1), paddings=[0] * len(channels),
        width=width, hidden=hidden, dropout=dropout, batch_norm=batch_norm,
        bn_after_pool=bn_after_pool, crop=crop,
    )
    net.onednn_eval_on_cpu = True  # see Net.onednn_eval_on_cpu; lenet, built the same way, was not faster in every run
    return net
