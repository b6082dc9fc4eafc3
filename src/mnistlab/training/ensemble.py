"""Ensembles: average the softmax outputs of several trained models on the test split.

>>> result = evaluate_ensemble(["runs/a", "runs/b", "runs/c"])      # doctest: +SKIP
>>> result.accuracy, [m.accuracy for m in result.members]           # doctest: +SKIP
(0.9978, [0.9971, 0.9969, 0.9973])
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import CheckpointError
from .checkpoint import check_fits_data, checkpoint_file, model_from_checkpoint, read_checkpoint, stored_config
from .evaluate import evaluate, stored_data


@dataclass
class Member:
    checkpoint: Path
    accuracy: float | None  # on the test split, alone; None where its outputs are not finite


@dataclass
class EnsembleResult:
    members: list[Member]
    # of the averaged softmax outputs; None where a member's outputs are not finite (the average's argmax
    # would then be class 0 for every image: a made-up accuracy)
    accuracy: float | None
    loss: float | None  # cross-entropy of the averaged outputs (no label smoothing: members may differ in theirs)
    dataset: str
    examples: int
    tta_shift: int = 0  # > 0: every member's outputs averaged over shifted copies of each image (TTA)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "examples": self.examples,
            "tta_shift": self.tta_shift,
            "members": [{"checkpoint": str(m.checkpoint), "test_accuracy": m.accuracy} for m in self.members],
            "ensemble": {"size": len(self.members), "test_accuracy": self.accuracy, "test_loss": self.loss},
        }


def evaluate_ensemble(
    runs: Sequence[str | Path], *, ema: bool = False, data_dir: str | None = None, tta_shift: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> EnsembleResult:
    """Test every member and the average of their softmax outputs on the test split of their dataset.

    All members must be trained on the same dataset with the same classes. The
    data is loaded as the first member's config says (``data_dir`` overrides
    where it lives). ``progress(what, done, total)`` is called as each member is tested
    (``what``: "testing member 2 of 3"; ``done`` of ``total`` images).
    """
    from ..data import load_test
    from ..errors import ConfigError

    if isinstance(runs, (str, bytes, os.PathLike)):  # a str was taken letter by letter: "run folder / has no ..."
        raise TypeError(f"evaluate_ensemble() takes a list of runs or checkpoints, e.g. ['runs/a', 'runs/b'], got "
                        f"one path, {runs!r}: put it in a list")
    if not runs:
        raise ConfigError("an ensemble needs at least one run or checkpoint")
    paths = [checkpoint_file(r, ema) for r in runs]
    seen: dict[Path, Path] = {}
    for p in paths:  # the same model twice would weigh double in the average
        twin = seen.setdefault(p.resolve(), p)
        if twin is not p:
            also = f" (also as {twin})" if str(twin) != str(p) else ""
            raise ConfigError(f"{p} is given twice{also}: each member must be another model")
    payloads = [read_checkpoint(p) for p in paths]
    # Another file is not always another model: a run's best.ckpt and its epochNNN file (or last.ckpt) can hold
    # the very same weights, which would count twice (read_checkpoint has checked each digest).
    same: dict[str, Path] = {}
    for p, payload in zip(paths, payloads):
        twin = same.setdefault(payload["weights_sha256"], p)
        if twin is not p:
            raise ConfigError(f"{p} holds the same weights as {twin}: each member must be another model")
    first = payloads[0]
    for p, payload in zip(paths[1:], payloads[1:]):
        if (payload.get("dataset"), payload.get("classes")) != (first.get("dataset"), first.get("classes")):
            raise CheckpointError(
                f"{p} was trained on {payload.get('dataset')!r} with classes {payload.get('classes')}, but "
                f"{paths[0]} on {first.get('dataset')!r} with {first.get('classes')}: an ensemble needs one dataset"
            )
    data = load_test(stored_data(stored_config(first, paths[0]).data, data_dir))  # the members hold their normalization
    for path, payload in zip(paths, payloads):  # before any member is tested
        check_fits_data(payload, data, path)
    members, total, logs = [], None, []
    for i, (path, payload) in enumerate(zip(paths, payloads), 1):
        what = f"testing member {i} of {len(paths)}"
        shown = (lambda done, n, what=what: progress(what, done, n)) if progress is not None else None
        ev = evaluate(model_from_checkpoint(payload), data.test, num_classes=data.num_classes, tta_shift=tta_shift,
                      progress=shown)
        members.append(Member(path, ev.accuracy if ev.finite else None))
        total = ev.probabilities if total is None else total + ev.probabilities
        logs.append(ev.log_probabilities)
    probs = total / len(paths)
    labels = data.test.labels.cpu()
    if any(m.accuracy is None for m in members):
        return EnsembleResult(members, None, None, data.dataset, int(labels.numel()), tta_shift)
    accuracy = float((probs.argmax(1) == labels).double().mean())
    # The members' mean in log space (logsumexp - log n): the log of float32 means that underflowed to 0 was
    # clamped at 1e-12, which capped a confidently wrong image's loss at 27.6
    log_mean = torch.stack(logs).logsumexp(0) - math.log(len(logs))
    loss = float(torch.nn.functional.nll_loss(log_mean, labels))
    return EnsembleResult(members, accuracy, loss, data.dataset, int(labels.numel()), tta_shift)


def _percent(accuracy: float | None) -> str:
    return f"{'-':>13}" if accuracy is None else f"{100 * accuracy:>12.2f}%"


def format_ensemble(result: EnsembleResult) -> str:
    total = f"ensemble of {len(result.members)}"
    # as wide as the last row's name too: members' paths shorter than it (`ensemble a b` reads a/best.ckpt)
    # pushed the ensemble's accuracy out of its column
    width = max(len(total), *(len(str(m.checkpoint)) for m in result.members))
    lines = [f"{'member':<{width}}  test accuracy", f"{'-' * width}  -------------"]
    lines += [f"{str(m.checkpoint):<{width}}  {_percent(m.accuracy)}" for m in result.members]
    lines.append(f"{total:<{width}}  {_percent(result.accuracy)}")
    if result.accuracy is None:
        lines.append("no ensemble accuracy: the outputs of the members marked - are not finite (NaN or infinite "
                     "logits), and so is their average")
    if result.tta_shift:
        by = "1 pixel" if result.tta_shift == 1 else f"1 to {result.tta_shift} pixels"
        lines.append(f"with test-time augmentation: each image and its shifts by {by} left, right, up and down, "
                     "for every member")
    return "\n".join(lines)
