"""Gradient checkpointing for every zoo model: ``features`` runs as segments that are recomputed in backward.

Training normally keeps every intermediate activation of the forward pass until
the backward pass has used it. With checkpointing, only each segment's input is
kept; the backward pass runs the segment's forward again to get the rest
(``torch.utils.checkpoint``, non-reentrant). That trades one extra forward pass
of ``features`` for the memory of all but one segment's activations.

The segments are cut from the children of ``features`` (an ``nn.Sequential`` in
every family) by one rule, so no family declares its own (see :func:`segments`):
a conv starts a segment and the plain layers after it (batch norm, activation,
pooling) join it; a residual block is a segment. So VGG, AlexNet and the small
CNNs recompute conv block by conv block (conv -> BN -> ReLU -> pool), ResNets
residual block by residual block. (Whole ResNet stages as segments would save
less: the first stage runs at full resolution and holds the largest share of
the activations, all of which its recompute would hold again at once.)

Two things would make a recomputed step differ from a plain one, and neither does:

* random numbers: non-reentrant checkpoint saves the RNG state before each
  segment and replays it for the recompute, then restores the global state, so
  a dropout mask is drawn once and later draws are unchanged;
* batch-norm running statistics: the recompute runs BN in training mode again,
  which would move ``running_mean`` / ``running_var`` / ``num_batches_tracked``
  a second time per step. :func:`keep_running_stats` restores them after the
  recompute, so they move once per step, as without checkpointing.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def segments(features: nn.Module) -> list[list[nn.Module]]:
    """Cut ``features`` into runs of layers recomputed as one (see the module docstring).

    Nested ``nn.Sequential`` containers (the ResNet stem and stages) are opened;
    any other module with children (a residual block) is a segment of its own; a
    conv starts a segment and the plain layers after it (batch norm, activation,
    pooling) join the one before them.

    >>> [len(s) for s in segments(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2),
    ...                                         nn.Conv2d(2, 2, 3), nn.ReLU()))]
    [3, 2]
    """
    if not isinstance(features, nn.Sequential):
        raise TypeError(f"gradient checkpointing needs features to be an nn.Sequential, got {type(features).__name__}")
    runs: list[list[nn.Module]] = []
    for child in features:
        if isinstance(child, nn.Sequential):
            runs += segments(child)
        elif next(child.children(), None) is not None or isinstance(child, nn.Conv2d) or not runs:
            runs.append([child])
        else:
            runs[-1].append(child)
    return runs


def _run(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


@contextlib.contextmanager
def keep_running_stats(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Put the batch-norm buffers of ``layers`` back as they were after the block inside has run."""
    buffers = [
        b
        for layer in layers
        for m in layer.modules()
        if isinstance(m, _NORMS)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:  # also when checkpoint stops the recompute early (it raises to do so)
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def checkpointed_features(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``features(x)``, keeping only each segment's input for the backward pass.

    Under ``torch.compile`` (``train.compile``) the compiled backward graph does the recompute, and
    it recomputes values, not the running statistics' updates; dynamo also cannot trace a
    ``context_fn``. So there the segments are checkpointed without :func:`keep_running_stats`.
    """
    compiling = torch.compiler.is_compiling()
    for layers in segments(features):
        context = {} if compiling else {
            "context_fn": lambda layers=layers: (contextlib.nullcontext(), keep_running_stats(layers))}
        x = checkpoint(functools.partial(_run, layers), x, use_reentrant=False, **context)
    return x
