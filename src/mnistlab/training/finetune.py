"""Fine-tuning: start from another run's weights, freeze some parameters, release them later.

* :func:`read_init_checkpoint` / :func:`init_from_checkpoint` (``finetune.init_from``)
  copy a checkpoint's weights into a freshly built model. When the class count
  differs, the classifier's output layer is left as built (freshly initialized).
  The normalization buffers stay the new training data's mean and std: the
  weights were trained on normalized inputs, and normalizing the new data by
  its own statistics gives them inputs of the same scale. Batch-norm running
  statistics are copied like the weights.
* :func:`match_parameters` / :func:`freeze` (``finetune.freeze``) set
  ``requires_grad=False`` on the parameters that match; the optimizer is built
  from the trainable ones only. The Trainer releases them at the start of epoch
  ``finetune.unfreeze_at`` as a new optimizer parameter group.
* :func:`hold_frozen_batch_norm`: a batch-norm layer whose parameters are all
  frozen runs in inference mode while training (it normalizes with its running
  statistics and does not update them), as Keras does for ``trainable=False``:
  a frozen layer is then a fixed function, and its statistics stay those its
  weights were trained with. Dropout layers keep training behaviour.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import CheckpointError, ConfigError
from .checkpoint import checkpoint_file, load_weights, read_checkpoint, refuse_a_larger_model


def split_patterns(text: str) -> tuple[str, ...]:
    """``"features.0.*, classifier.0"`` -> ``("features.0.*", "classifier.0")`` (commas and/or spaces).

    >>> split_patterns("features.0.*, classifier.0 features.4")
    ('features.0.*', 'classifier.0', 'features.4')
    """
    return tuple(p for p in re.split(r"[,\s]+", text) if p)


def _matches(name: str, pattern: str) -> bool:
    # a prefix must end at a dot: "features.1" is features.1.weight, not features.10.weight
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _layer_names(model: nn.Module) -> str:
    """``features.{0,4}, classifier.{1,3}``: the modules two levels down that hold parameters."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        children = groups.setdefault(parts[0], [])
        if len(parts) > 2 and parts[1] not in children:
            children.append(parts[1])
    return ", ".join(f"{top}.{{{','.join(c)}}}" if c else top for top, c in groups.items())


def match_parameters(model: nn.Module, patterns: str | Sequence[str]) -> list[str]:
    """Names of the parameters that any pattern matches (in model order).

    A pattern is a parameter name, a module name (a prefix ending at a dot:
    ``features`` or ``classifier.0``), or a shell-style glob over the dotted
    name (``features.0.*``, ``*.bn*``; ``*`` also crosses dots). A pattern that
    matches nothing is a ConfigError listing the model's layers.

    >>> match_parameters(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)), ["0"])
    ['0.weight', '0.bias']

    One string is split as ``--freeze`` splits it (iterated, ``"features"`` was
    eight one-letter patterns, and the error named ``'f'``):

    >>> match_parameters(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)), "0, 2.bias")
    ['0.weight', '0.bias', '2.bias']
    """
    if isinstance(patterns, str):
        patterns = split_patterns(patterns)
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(_matches(n, pattern) for n in names):
            raise ConfigError(
                f"finetune.freeze pattern {pattern!r} matches no parameter; the model's layers are "
                f"{_layer_names(model)} (names like features.0.weight; globs like features.0.* work; "
                "`mnistlab models --details NAME` lists every layer)"
            )
    return [n for n in names if any(_matches(n, p) for p in patterns)]


def freeze(model: nn.Module, patterns: str | Sequence[str]) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on the parameters ``patterns`` (a list, or one string as ``--freeze`` takes
    it) match; return them."""
    if isinstance(patterns, str):
        patterns = split_patterns(patterns)
    if not patterns:
        return []
    chosen = set(match_parameters(model, patterns))
    params = [p for n, p in model.named_parameters() if n in chosen]
    for p in params:
        p.requires_grad_(False)
    return params


def hold_frozen_batch_norm(model: nn.Module) -> None:
    """Put every batch-norm layer whose parameters are all frozen in eval mode (call after ``model.train()``)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def read_init_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read the checkpoint ``finetune.init_from`` names (a run folder means its best.ckpt)."""
    try:
        path = checkpoint_file(path)
    except CheckpointError as e:
        raise CheckpointError(f"finetune.init_from: {e}") from None
    try:
        payload = read_checkpoint(path)
    except CheckpointError as e:  # said as the folder's error is: which setting named it, and what it takes
        raise CheckpointError(f"finetune.init_from: {e}; it takes a .ckpt file that mnistlab train wrote (best.ckpt, "
                              "last.ckpt, an epoch's .ckpt) or a run folder (its best.ckpt)") from None
    try:  # the run builds the model the checkpoint's config describes: one larger than its weights is crafted
        refuse_a_larger_model(payload, path)
    except CheckpointError as e:
        raise CheckpointError(f"finetune.init_from: {e}") from None
    return path, payload


def renumbered_head(state: dict[str, Any], own: dict[str, Any], prefix: str = "classifier.") -> dict[str, Any]:
    """``state`` with its classifier's layers renamed to ``own``'s, in order, where the two differ only in the
    layers' numbers: Dropout layers exist only where dropout > 0, so a run started from weights trained with
    another dropout (on or off) found ``classifier.1.weight`` where it had ``classifier.0.weight``. Else as it is.

    >>> sorted(renumbered_head({"classifier.1.weight": 1, "f.w": 2}, {"classifier.0.weight": 0, "f.w": 0}))
    ['classifier.0.weight', 'f.w']
    """
    theirs, ours = [k for k in state if k.startswith(prefix)], [k for k in own if k.startswith(prefix)]
    if theirs == ours or len(theirs) != len(ours):
        return state
    numbers: dict[str, str] = {}
    for a, b in zip(theirs, ours):
        (na, _, rest_a), (nb, _, rest_b) = a[len(prefix):].partition("."), b[len(prefix):].partition(".")
        if rest_a != rest_b or numbers.setdefault(na, nb) != nb:
            return state  # another head, not the same layers numbered otherwise: load_weights says what differs
    if len(set(numbers.values())) != len(numbers):
        return state
    return {(prefix + numbers[k[len(prefix):].partition(".")[0]] + "." + k[len(prefix):].partition(".")[2]
             if k.startswith(prefix) else k): v for k, v in state.items()}


def init_from_checkpoint(model: nn.Module, payload: dict[str, Any], *, model_name: str, num_classes: int,
                         in_channels: int, image_size: Sequence[int], source: str = "the checkpoint",
                         model_options: dict[str, Any] | None = None) -> str:
    """Copy the checkpoint's weights into ``model``; return a line saying what was copied.

    The output layer is kept as built when the class count differs; the
    normalization buffers are kept as built (the new data's); every other
    tensor must fit, else a CheckpointError says which do not and why (with
    ``model_options``, the config's [model] section, also which options differ
    from those the checkpoint was trained with).
    """
    theirs = payload["model_name"]
    if theirs != model_name:
        raise CheckpointError(
            f"finetune.init_from: {source} holds a {theirs!r} model but the config asks for {model_name!r}; "
            f"use --model {theirs} with the same [model] options (the CLI does this when --config is not given)"
        )
    own = model.state_dict()
    payload = {**payload, "model": renumbered_head(payload["model"], own)}
    keep = {"mean", "std"}
    their_classes = payload.get("num_classes")
    head = getattr(model, "output_layer", None)
    replaced = their_classes != num_classes
    if replaced:
        if head is None:
            raise CheckpointError(f"finetune.init_from: {source} has {their_classes} classes, this data {num_classes}, "
                                  "and the model has no output_layer to replace")
        keep |= {k for k in own if k.startswith(head + ".")}
    state = {k: v for k, v in payload["model"].items() if k not in keep}
    state.update({k: own[k] for k in keep if k in own})
    try:
        load_weights(model, state, source=source)
    except CheckpointError as e:
        shape = [payload.get("in_channels"), *(payload.get("image_size") or [])]
        ours = [in_channels, *image_size]
        why = (f"; it was trained on {'x'.join(map(str, shape))} images and this data is {'x'.join(map(str, ours))}"
               if shape != ours else "")
        why += _options_that_differ(payload, model_options)
        raise CheckpointError(f"finetune.init_from: {e}{why}") from None
    note = f"initialized from {source} ({theirs}, {payload.get('dataset', '?')}, epoch {payload.get('epoch', '?')})"
    if replaced:
        note += f"; new output layer {head} for {num_classes} classes (the checkpoint has {their_classes})"
    return note


def check_frozen_head(model: nn.Module, payload: dict[str, Any], num_classes: int, freeze: Sequence[str],
                      unfreeze_at: int | None) -> None:
    """A ConfigError where init_from replaces the output layer (the checkpoint has another class count) and
    ``freeze`` holds it with no ``unfreeze_at``: the new layer would keep its random start for the whole run,
    and the run would train to chance accuracy without a word."""
    head = getattr(model, "output_layer", None)
    if payload.get("num_classes") == num_classes or head is None or not freeze or unfreeze_at is not None:
        return
    held = [n for n in match_parameters(model, freeze) if n.startswith(head + ".")]
    if held:
        raise ConfigError(f"finetune.freeze holds {', '.join(held)}, the output layer that init_from replaces for "
                          f"{num_classes} classes (the checkpoint has {payload.get('num_classes')}): it would stay at "
                          f"its random start; leave it out of finetune.freeze, or set finetune.unfreeze_at")


def _options_that_differ(payload: dict[str, Any], options: dict[str, Any] | None) -> str:
    """``; [model] options differ from the checkpoint's: width = 2 (its: 1)`` where they do, else "": which
    setting made the shapes differ, not only which tensors.

    >>> print(_options_that_differ({"config": {"model": {"name": "cnn", "width": 1.0}}}, {"name": "cnn", "width": 2.0}))
    ; [model] options differ from the checkpoint's: width = 2.0 (its: 1.0)
    """
    stored = (payload.get("config") or {}).get("model") if isinstance(payload.get("config"), dict) else None
    if not isinstance(stored, dict) or options is None:
        return ""

    def shown(v: Any) -> str:
        return "none" if v is None else repr(v) if isinstance(v, str) else str(v)

    differ = [f"{k} = {shown(options.get(k))} (its: {shown(stored.get(k))})"
              for k in sorted(set(options) | set(stored)) if k != "name" and options.get(k) != stored.get(k)]
    return "; [model] options differ from the checkpoint's: " + ", ".join(differ) if differ else ""


def released_by(unfreeze_at: int | None, epochs_done: int, batch: int) -> bool:
    """Whether a run ``epochs_done`` epochs (and ``batch`` batches) in has released its frozen parameters.

    The release happens at the start of epoch ``unfreeze_at``, before its first batch.

    >>> released_by(3, 2, 0), released_by(3, 2, 5), released_by(3, 3, 0)
    (False, True, True)
    """
    return unfreeze_at is not None and (epochs_done + 1 > unfreeze_at or (epochs_done + 1 == unfreeze_at and batch > 0))


def trainable_line(model: nn.Module) -> str:
    """``trainable 12,345 of 1,234,567 parameters``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable {trainable:,} of {total:,} parameters"


__all__ = [
    "split_patterns",
    "match_parameters",
    "freeze",
    "hold_frozen_batch_norm",
    "read_init_checkpoint",
    "init_from_checkpoint",
    "released_by",
    "trainable_line",
]
