"""Model registry: builders file themselves under a name with ``@register``.

A builder is a function ``builder(*, num_classes, in_channels, image_size, **options)``
returning a :class:`~mnistlab.models.base.Net` (everything is passed by keyword, so the
``*`` may be left out). ``build_model`` drops options
that are ``None`` so that each model's own defaults hold, and rejects options a
model does not take with the list of those it does.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Callable

from ..config import check_model_option_types
from ..errors import ConfigError
from .base import Net, too_large

Builder = Callable[..., Net]
_REGISTRY: dict[str, Builder] = {}
# Options every builder receives from build_model; they are not user options.
_STRUCTURAL = ("num_classes", "in_channels", "image_size")


def register(name: str | None = None) -> Callable[[Builder], Builder]:
    """File a builder under ``name`` (default: the function's name).

    The builder is called with ``num_classes``, ``in_channels`` and ``image_size`` and the options set, all by
    keyword; its other parameters, keyword-only or ordinary (``def tiny(num_classes, in_channels, image_size,
    width=1.0)``), are the options a config's ``[model]`` may set (:func:`model_options`).

    >>> from mnistlab.models.cnn import make_cnn
    >>> @register("tiny")                                          # doctest: +SKIP
    ... def tiny(*, num_classes, in_channels, image_size, width: float = 1.0):
    ...     return make_cnn("tiny", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
    ...                     channels=[4, 8], kernel_sizes=[3, 3], paddings=[1, 1], width=width)
    """

    def deco(fn: Builder) -> Builder:
        key = name or fn.__name__
        old = _REGISTRY.get(key)
        # The same function defined again (a notebook cell run twice, a module reloaded) replaces the first.
        same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not same:
            raise ValueError(f"model {key!r} is registered twice ({old.__module__}.{old.__qualname__} and "
                             f"{fn.__module__}.{fn.__qualname__})")
        _REGISTRY[key] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The user-settable options a model's builder accepts: its parameters but the standard three that can be
    passed by keyword, as build_model passes them; ordinary ones as well as keyword-only ones."""
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(_get(name)).parameters.values()
    return [p.name for p in params if p.name not in _STRUCTURAL and p.kind in by_keyword]


def _get(name: str) -> Builder:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None


def check_options_taken(name: str, options: dict) -> None:
    """A ConfigError naming the options (not None) that model ``name`` does not take, and those it does."""
    accepted = model_options(name)
    unknown = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted) or '(none)'}"
        )


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: tuple[int, int] = (28, 28),
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **options,
) -> Net:
    """Build a registered model.

    ``mean`` / ``std`` are the training split's per-channel statistics; they are
    stored in the model as buffers so a checkpoint carries its normalization.

    >>> import torch
    >>> from mnistlab import build_model
    >>> net = build_model("cnn", num_classes=10)
    >>> net(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    builder = _get(name)
    options = {k: v for k, v in options.items() if v is not None}
    check_options_taken(name, options)
    check_model_option_types(name, options)
    num_classes, in_channels, image_size = _structural(num_classes, in_channels, image_size)
    try:
        net = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **options)
    except (RuntimeError, MemoryError, OverflowError, TypeError) as e:
        # A width or channel count far too large: the allocator refuses, or the size overflows a C integer.
        if not too_large(e):
            raise
        overflow = isinstance(e, OverflowError) or "overflow" in str(e).lower()
        reason = "its sizes overflow" if overflow else "its weights or its feature maps do not fit in memory"
        raise ConfigError(f"model {name!r} is too large to build with {options}: {reason}; "
                          "lower model.width, the channel counts, the hidden widths, the kernel size or the padding"
                          ) from None
    if not isinstance(net, Net):  # set_normalization, checkpoints and export need a Net's buffers and layout
        raise TypeError(f"the builder of model {name!r} ({builder.__module__}.{builder.__qualname__}) returned a "
                        f"{type(net).__name__}, not a mnistlab.models.Net: build it from features and a "
                        "classifier with Net(...) or a zoo maker such as mnistlab.models.cnn.make_cnn")
    net.set_normalization(mean if mean is not None else (0.0,) * in_channels, std if std is not None else (1.0,) * in_channels)
    return net


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _structural(num_classes: object, in_channels: object, image_size: object) -> tuple[int, int, tuple[int, int]]:
    """The three sizes every builder gets, checked: ``image_size=28`` was "'int' object is not iterable",
    ``(28, 28, 1)`` "too many values to unpack", and a float or bool count a TypeError from deep inside torch."""
    try:
        sides = tuple(image_size)  # a list from JSON, a torch.Size or a numpy array as well
    except TypeError:
        sides = None
    if not (_whole(num_classes) and _whole(in_channels) and sides is not None and len(sides) == 2
            and all(_whole(s) for s in sides) and min(num_classes, in_channels, *sides) >= 1):
        raise ConfigError(
            "num_classes, in_channels and image_size (height, width) must be positive whole numbers, got "
            f"{num_classes!r}, {in_channels!r}, {image_size!r}"
        )
    return int(num_classes), int(in_channels), (int(sides[0]), int(sides[1]))
