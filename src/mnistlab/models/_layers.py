"""Building blocks shared by the model families: option checks, conv stacks, classifier heads.

Builders check their options here so that a bad value (``channels=[32, "X"]``,
``width=0``) is a ConfigError naming the model and the valid choices, also when
``build_model`` is called directly rather than through a checked ModelConfig.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

from torch import nn

from ..errors import ConfigError
from .base import scaled

Channel = Union[int, str]  # a conv kernel count, or "M" for a 2x2 max-pool in VGG-style lists
Activation = Callable[[], nn.Module]


def check_options(
    model: str,
    *,
    channels: Sequence[Channel] = (1,),
    allow_pool: bool = False,
    num_channels: int | None = None,
    width: float = 1.0,
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    kernel_size: int = 1,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
) -> None:
    """Raise ConfigError for an option value that ``model`` cannot be built with."""
    pool_note = ' or "M" (2x2 max-pool)' if allow_pool else ""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
        raise ConfigError(f"model {model!r}: channels must be a list of conv kernel counts, got {channels!r}")
    for c in channels:
        ok = (allow_pool and c == "M") or (isinstance(c, int) and not isinstance(c, bool) and c > 0)
        if not ok:
            raise ConfigError(f"model {model!r}: channels entries must be positive integers{pool_note}, got {c!r}")
    convs = [c for c in channels if c != "M"]
    if not convs:
        raise ConfigError(f"model {model!r}: channels must hold at least one conv kernel count, got {list(channels)}")
    if num_channels is not None and len(channels) != num_channels:
        raise ConfigError(
            f"model {model!r}: channels must list {num_channels} stage widths, got {len(channels)} ({list(channels)})"
        )
    if not width > 0:
        raise ConfigError(f"model {model!r}: width must be greater than zero, got {width}")
    if any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in hidden):
        raise ConfigError(f"model {model!r}: hidden entries must be positive integers, got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model {model!r}: dropout must be in [0, 1), got {dropout}")
    if kernel_size < 1 or stride < 1:
        raise ConfigError(f"model {model!r}: kernel_size and stride must be at least 1, got {kernel_size} and {stride}")
    if min((padding,) if isinstance(padding, int) else padding) < 0:
        raise ConfigError(f"model {model!r}: padding must be zero or more, got {padding}")


def check_padding(model: str, padding: int, kernel_size: int) -> None:
    """A ConfigError for a conv padding of ``kernel_size`` or more: the outputs beyond ``kernel_size - 1`` see
    only the zeros of the padding (padding 40 on a 5x5 cnn: 104x104 and 128x128 maps for a 28x28 image, 215 M
    MACs where 3 M were; padding 5000 took 13 GB for the dry run of two images)."""
    if 1 <= kernel_size <= padding:  # (a kernel below 1 is check_options' to refuse)
        raise ConfigError(f"model {model!r}: padding = {padding} is more than kernel_size - 1 = {kernel_size - 1}: "
                          f"the outputs beyond that see only the padding's zeros; use 0 to {kernel_size - 1} "
                          f"({kernel_size // 2} keeps the size of the map for an odd kernel)")


def conv_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    batch_norm: bool = False,
    activation: Activation = nn.ReLU,
) -> list[nn.Module]:
    """Conv -> (batch norm) -> activation. The conv has no bias when batch norm follows (BN's shift replaces it)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(activation())
    return layers


def conv_pool_stack(
    in_channels: int,
    channels: Sequence[int],
    kernel_sizes: Sequence[int],
    paddings: Sequence[int | tuple[int, int]],
    *,
    stride: int = 1,
    batch_norm: bool = False,
    bn_after_pool: bool = False,
    activation: Activation = nn.ReLU,
    pool: Callable[[int], nn.Module] = nn.MaxPool2d,
) -> nn.Sequential:
    """The classic small-CNN trunk: (conv -> [BN] -> activation -> 2x2 pool) for each entry of ``channels``.

    With ReLU and max-pooling the pool comes first (conv -> [BN] -> pool -> ReLU):
    the two commute (ReLU is monotonic), so the outputs and gradients are the same,
    but ReLU and its backward then touch a quarter of the values. On a CPU these
    elementwise passes, not the convs, dominate a small CNN's step (0.7x the step
    time for the ``fast`` model, benchmarks/roofline.py). Parameter names do not
    change, so checkpoints load either way.

    ``bn_after_pool`` moves batch norm after the pool too (conv -> pool -> BN ->
    activation). That is a different network, not a reordering of the same one:
    BN's statistics are those of the pooled maps, and a negative BN scale would
    not commute with max-pooling. It normalizes a quarter of the values, and BN's
    forward and backward passes are the costliest elementwise work of a small
    CNN with batch norm (benchmarks/bn_after_pool.py). Its layers are numbered
    differently, so its checkpoints need the same setting to load.
    """
    pool_first = activation is nn.ReLU and pool is nn.MaxPool2d
    layers: list[nn.Module] = []
    for out_channels, k, p in zip(channels, kernel_sizes, paddings, strict=True):
        conv, *norm_act = conv_act(
            in_channels, out_channels, k, stride=stride, padding=p, batch_norm=batch_norm, activation=activation
        )
        if bn_after_pool:
            layers += [conv, pool(2), *norm_act]
        elif pool_first:
            layers += [conv, *norm_act[:-1], pool(2), norm_act[-1]]
        else:
            layers += [conv, *norm_act, pool(2)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def vgg_stack(
    in_channels: int,
    cfg: Sequence[Channel],
    *,
    image_size: Sequence[int],
    kernel_size: int = 3,
    width: float = 1.0,
    batch_norm: bool = True,
    fit_pools: bool,
) -> nn.Sequential:
    """A VGG-style trunk from a list of kernel counts and "M" (2x2 max-pool); convs keep the size (padding k//2).

    With ``fit_pools=True`` the list is fitted to the image: the spatial size is
    tracked while the layers are placed, and an "M" is dropped whenever the map is
    already smaller than 2x2 (a 2x2 pool would shrink it to nothing). The built-in
    VGG and AlexNet layouts were made for 224x224 images and pool five (three)
    times; on 28x28 this keeps the first four pools (28->14->7->3->1) and drops
    the fifth, on 32x32 it keeps all five (->1), on 20x20 four (20->10->5->2->1).
    The rule only depends on the image size, so a checkpoint rebuilds identically.
    (Convs after the map reaches 1x1 still run; their 3x3 kernels then act as 1x1
    convs, since only the centre tap sees data, the rest sees padding.)
    With ``fit_pools=False`` (a user's own list) every "M" is placed as written.
    A pool right after a conv block goes before the block's ReLU (see :func:`conv_pool_stack`).
    """
    h, w = image_size
    layers: list[nn.Module] = []
    for c in cfg:
        if c == "M":
            if fit_pools and min(h, w) < 2:
                continue
            # before the ReLU that ends the conv block, as in conv_pool_stack: the same function and gradients,
            # with the ReLU on a quarter of the values; parameter names stay (ReLU and pool have none)
            at = len(layers) - 1 if layers and isinstance(layers[-1], nn.ReLU) else len(layers)
            layers.insert(at, nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        else:
            out_channels = scaled(int(c), width)
            layers += conv_act(in_channels, out_channels, kernel_size, padding=kernel_size // 2, batch_norm=batch_norm)
            in_channels = out_channels
            # an even kernel with padding k//2 grows the map by one pixel
            h, w = h + 2 * (kernel_size // 2) - kernel_size + 1, w + 2 * (kernel_size // 2) - kernel_size + 1
    return nn.Sequential(*layers)


def classifier_head(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    *,
    dropout: float = 0.0,
    activation: Activation = nn.ReLU,
    dropout_first: bool = True,
    dropout_last: bool = True,
) -> nn.Sequential:
    """Linear layers ``in -> hidden... -> num_classes`` with an activation between them.

    Dropout (when ``dropout > 0``) goes before every linear layer between hidden
    layers; ``dropout_first`` / ``dropout_last`` say whether the first linear layer
    (on the flattened features) and the last one (the logits) get it too. The
    original AlexNet drops before all but the last, VGG before all but the first.
    A head with no hidden layer still gets its dropout when ``dropout_first`` is set.

    >>> classifier_head(8, [4], 2, dropout=0.5)
    Sequential(
      (0): Dropout(p=0.5, inplace=False)
      (1): Linear(in_features=8, out_features=4, bias=True)
      (2): ReLU()
      (3): Dropout(p=0.5, inplace=False)
      (4): Linear(in_features=4, out_features=2, bias=True)
    )
    """
    widths = [in_features, *hidden, num_classes]
    n_linear = len(widths) - 1
    layers: list[nn.Module] = []
    for i in range(n_linear):
        first, last = i == 0, i == n_linear - 1
        if dropout and (dropout_first if first else dropout_last if last else True):
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)
