"""Model registry: builders file themselves under a name with ``@register``.

A builder is a function ``builder(*, num_classes, in_channels, image_size, **options)``
returning a :class:`~mnistlab.models.base.Net` (everything is passed by keyword, so the
``*`` may be left out). ``build_model`` drops options
that are ``None`` so that each model's own defaults hold, and rejects options a
model does not take with the list of those it does.
"""

from __future__ import annotations

import inspect
import json
import numbers
from typing import Any, Callable, Sequence

import torch
from torch.overrides import TorchFunctionMode

from ..config import check_model_option_types
from ..errors import ConfigError
from .base import MapTooSmall, Net, too_large

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
    if not isinstance(name, str):  # build_model(cfg.model) was "unknown model ModelConfig(name='cnn', ...)"
        raise TypeError(f"build_model() takes a model name such as 'cnn', got {type(name).__name__}; for a config's "
                        "[model] section: build_model(cfg.model.name, **cfg.model.options())")
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
    # the builder gets the values checked, as the config holds them (kernel_size=np.int64(3) was a TypeError
    # inside it); the messages name them as given
    checked = check_model_option_types(name, options)
    num_classes, in_channels, image_size = _structural(num_classes, in_channels, image_size)
    try:
        with _MemoryBudget() as budget:
            net = builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **checked)
    except _OverBudget:
        raise ConfigError(f"model {name!r} is too large to build with {options}: its weights and its dry run's "
                          f"input need more than {_bytes(budget.used)}, but this machine has {_bytes(budget.free)} "
                          "free; lower model.width, the channel counts, the hidden widths or the kernel size") from None
    except MapTooSmall as e:  # which kernel, stride, crop or layout would fit, not only which layer failed
        sizes = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        raise MapTooSmall(f"{e}{_values_that_fit(builder, sizes, checked)}") from None
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
    net.model_name = name  # the zoo name, for what names the model later (export's metadata said "Net")
    return net


def meta_model(builder: Builder, **kwargs: Any) -> Net:
    """What ``builder(**kwargs)`` makes, on the meta device: its shapes and sizes with nothing allocated or
    initialized (crafted or mistaken sizes can mean billions of weights), and the random stream untouched."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return builder(**kwargs)


def _bytes(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


class _OverBudget(Exception):
    """Raised inside a build when the tensors made so far would not fit in the free memory."""


class _MemoryBudget(TorchFunctionMode):
    """Counts the bytes of the CPU tensors a build makes (its weights and buffers, the dry run's input) and
    refuses the build once they pass the machine's free memory (Linux's MemAvailable; elsewhere nothing is
    counted). It refuses right after ``torch.empty`` has reserved a weight, before its initialization writes
    it: the allocator refuses only a tensor larger than the machine, so weights of 20 GB in tensors of a few
    GB each (alexnet at width 16) were all initialized, and a 16 GB machine swapped until the OOM killer came."""

    _FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full)  # (a tuple: ``func`` need not be hashable)

    def __init__(self) -> None:
        super().__init__()
        from ..training.fit import available_memory

        self.free, self.used = available_memory(), 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.free is not None and func in self._FACTORIES and isinstance(out, torch.Tensor) \
                and out.device.type == "cpu":
            self.used += out.numel() * out.element_size()
            if self.used > self.free:
                raise _OverBudget()
        return out


def _values_that_fit(builder: Builder, sizes: dict[str, Any], options: dict[str, Any]) -> str:
    """For a model whose layers shrink the image below 1x1: the nearest value of each option that sizes the
    map (crop, stride, kernel_size, padding, channels; those set first) with which it fits, the others as set,
    as text to end its message ("" where none does). Each value is tried on the meta device, which allocates
    nothing: a kernel of 10,000 pixels would have its weights built, and initialized, on the way down."""
    from ..training.fit import available_memory  # (training imports the models: not at import time)

    params = inspect.signature(builder).parameters
    free = available_memory()

    def fits(**changed: Any) -> bool:
        try:
            net = meta_model(builder, **sizes, **{**options, **changed})
        except Exception:  # noqa: BLE001 - any refusal (shrinks, overflows, a bad value): this value does not fit
            return False
        tensors = [*net.parameters(), *net.buffers()]
        return free is None or sum(x.numel() * x.element_size() for x in tensors) <= free  # and builds here

    def nearest(key: str, values: Sequence[Any]) -> Any:
        """The first of ``values`` (ordered from the set one outwards; a range is not made into a list, whatever
        its length) that fits. The map grows along them, so if the last one fits a binary search finds it."""
        if not values or not fits(**{key: values[-1]}):
            return None
        lo, hi = 0, len(values) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(**{key: values[mid]}) else (mid + 1, hi)
        return values[lo]

    def current(key: str) -> Any:
        return options[key] if key in options else params[key].default

    found = []
    for key in sorted(("crop", "stride", "kernel_size", "padding", "channels"), key=lambda k: k not in options):
        if key not in params or not isinstance(current(key), (int, list, tuple)):  # (None: the model's own rule)
            continue
        value = current(key)
        if key in ("crop", "stride", "kernel_size"):  # smaller: less cut, smaller steps, smaller windows
            fitting = nearest(key, range(value - 1, -1 if key == "crop" else 0, -1))
        elif key == "padding":  # more, up to kernel_size - 1 (beyond it, outputs see only zeros)
            kernel = current("kernel_size")
            fitting = nearest(key, range(value + 1, kernel)) if isinstance(kernel, int) else None
        else:  # the layout: VGG-style lists lose their last pools, plain ones their last stages
            layout = list(value)
            if "M" in layout:
                pools = [i for i, c in enumerate(layout) if c == "M"]
                shorter = [[c for i, c in enumerate(layout) if i not in pools[len(pools) - n:]] for n in
                           range(1, len(pools) + 1)]
            else:
                shorter = [layout[:n] for n in range(len(layout) - 1, 0, -1)]
            fitting = nearest(key, shorter)
        if fitting is not None:
            found.append(f"model.{key} = {json.dumps(fitting)}")
    if not found:
        return ""
    return f"; it fits with {' or '.join(found)} ({'each alone, ' * (len(found) > 1)}the other options as set)"


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
