"""Model size and cost: parameter counts, multiply-accumulates per image, a per-layer table.

MACs are counted by one forward pass of a single zero image with hooks on the
leaf modules, in eval mode and without gradients, so batch-norm statistics,
dropout masks and the model's train/eval flags are left as they were.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once); with ``trainable_only``, only those with ``requires_grad``.

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one call for one image: convs and linear layers only (bias additions not counted)."""
    per_image = output[0].numel()
    if isinstance(module, _CONVS):
        # out_c * out_h * out_w outputs, each a dot product over (in_c / groups) * kh * kw inputs
        return per_image * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def _trace(model: nn.Module, input_size: Sequence[int] | None) -> list[dict[str, Any]]:
    """Rows for every leaf module (and any module holding parameters of its own), in definition order."""
    if input_size is None:
        if not hasattr(model, "in_channels") or not hasattr(model, "image_size"):
            raise ValueError(f"{type(model).__name__} has no in_channels / image_size; pass input_size=(C, H, W)")
        input_size = (model.in_channels, *model.image_size)
    # A parametrized layer (weight_norm, spectral_norm) holds its weight in its ``parametrizations`` child: it
    # was no leaf, and without a bias held no parameter of its own, so it had no row and its MACs were not
    # counted, while its parametrization modules were listed as layers whose "output" was the weight. The layer
    # is a row with the parametrization's parameters; the parametrization modules are none.
    inside = {sub for m in model.modules() if parametrize.is_parametrized(m) for sub in m.parametrizations.modules()}
    rows: dict[nn.Module, dict[str, Any]] = {}
    seen: set[int] = set()  # a parameter two layers share (tied weights) counts once, as in count_parameters
    for name, m in model.named_modules():
        if m in inside:
            continue
        is_leaf = all(c in inside for c in m.children())
        own = list(m.parameters(recurse=False))
        if parametrize.is_parametrized(m):
            own += m.parametrizations.parameters()
        if is_leaf or own:
            counted = [p for p in own if id(p) not in seen]
            seen.update(id(p) for p in counted)
            rows[m] = {
                "name": name or "(model)",
                "type": type(m).__name__,
                "output_shape": None,  # stays None for a layer the forward pass does not use
                "params": sum(p.numel() for p in counted),
                "macs": 0,
            }

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        row = rows[module]
        if isinstance(output, torch.Tensor):
            if row["output_shape"] is None:  # a module called twice keeps its first shape, adds both costs
                row["output_shape"] = tuple(output.shape[1:])
            row["macs"] += _layer_macs(module, output)

    ref = next(model.parameters(), None)
    if ref is None:
        ref = next(model.buffers(), None)
    x = torch.zeros(1, *input_size, device=ref.device if ref is not None else None,
                    dtype=ref.dtype if ref is not None and ref.is_floating_point() else None)
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in rows]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return list(rows.values())


def output_bytes(model: nn.Module, x: torch.Tensor, *, leaves_only: bool = False) -> list[int]:
    """The bytes of each tensor a module of ``model`` returns in one forward pass of ``x``, in call order;
    with ``leaves_only``, the modules without children only (their outputs add up to what autograd keeps,
    a container's output being one of them again). The caller sets the mode and the grad context.

    >>> output_bytes(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.zeros(1, 1, 5, 5), leaves_only=True)
    [72, 72]
    """
    sizes: list[int] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if not leaves_only or next(m.children(), None) is None]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def count_macs(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """Multiply-accumulates for one image through one forward pass.

    Counted: convolutions (``out_h * out_w * out_c * in_c / groups * kh * kw``) and
    linear layers (``in * out``). Counted as 0: batch norm, pooling, activations,
    dropout, bias additions, residual additions and the input normalization;
    they are elementwise and small next to the convs. ``input_size`` is (C, H, W),
    by default the model's own ``(in_channels, *image_size)``.

    >>> count_macs(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(18, 4)), (1, 5, 5))
    234
    """
    return sum(row["macs"] for row in _trace(model, input_size))


def layer_table(model: nn.Module, input_size: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One row per leaf layer, Keras-summary style, in definition order.

    Each row has ``name`` (dotted path), ``type``, ``output_shape`` (per image,
    without the batch axis; None for a layer the forward pass does not reach),
    ``params`` (the layer's own parameters, with those of its weight_norm-style parametrizations; one that
    layers share in the first one's row only) and ``macs`` (as in :func:`count_macs`).

    >>> [r["output_shape"] for r in layer_table(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 5, 5))]
    [(2, 3, 3)]
    """
    return _trace(model, input_size)


def format_layer_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`layer_table` as an aligned text table with totals."""
    header = ("layer", "type", "output shape", "parameters", "MACs")
    body = [
        (r["name"], r["type"], "-" if r["output_shape"] is None else "x".join(map(str, r["output_shape"])),
         f"{r['params']:,}", f"{r['macs']:,}")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        left = [line[i].ljust(widths[i]) for i in range(3)]
        right = [line[i].rjust(widths[i]) for i in range(3, 5)]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(fmt(header))
    total_params = sum(r["params"] for r in rows)
    total_macs = sum(r["macs"] for r in rows)
    return "\n".join(
        [fmt(header), rule, *map(fmt, body), rule,
         f"total: {total_params:,} parameters, {total_macs:,} MACs per image"]
    )
