"""How configs/best.toml's test-time augmentation was chosen: on the validation split, then one test read.

Given the run folders of the `best` preset (benchmarks/best_preset.py --out), it
evaluates each run's weight average (ema.ckpt) on the validation split with
each candidate set of views, and applies the rule below, which was written
down before any of these numbers was computed. Only then is the test split
read, once, for the chosen candidate (the plain weights and the weight
average), with the product's own `evaluate`.

Candidates (views of each image whose softmax outputs are averaged):
  tta.shift = 0   the image alone
  tta.shift = 1   the image and its shifts by 1 pixel left, right, up, down (5 views; the preset's before)
  tta.shift = 2   ... and also by 2 pixels (9 views)
  box1            the 3x3 neighbourhood of 1-pixel shifts, diagonals included (9 views; not a product option)
  shift1+rot10    tta.shift = 1 and rotations by -10 and +10 degrees (7 views; not a product option)
Rule: the candidate with the most correct validation images over all runs
replaces tta.shift = 1 only if it has at least 2 more; ties go to fewer views.

    .venv/bin/python benchmarks/tta_choice.py --data-dir ../shared/data runs/best-preset/seed*
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args
from mnistlab.config import apply_overrides, load_config
from mnistlab.data.augment import shift_images
from mnistlab.data.batching import iterate_batches
from mnistlab.data.datasets import load_data
from mnistlab.training.checkpoint import model_from_checkpoint, read_checkpoint
from mnistlab.training.evaluate import evaluate, predict_logits, tta_views


def _rotated(x: torch.Tensor, degrees: float) -> torch.Tensor:
    t = math.radians(degrees)
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]).expand(len(x), 2, 3)
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)


# the candidates that are not product options, as functions from a batch to its views
_AD_HOC = {
    "box1": lambda x: [shift_images(x, dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)],
    "shift1+rot10": lambda x: [*tta_views(x, 1), _rotated(x, -10), _rotated(x, 10)],
}
_VIEWS = {"tta.shift = 0": 1, "tta.shift = 1": 5, "tta.shift = 2": 9, "box1": 9, "shift1+rot10": 7}


@torch.no_grad()
def _correct(model: torch.nn.Module, split, candidate: str) -> int:
    if candidate.startswith("tta.shift"):
        ev = evaluate(model, split, 500, tta_shift=int(candidate.split("=")[1]))
        return int((ev.predictions == ev.labels).sum())
    correct = 0
    for x, y in iterate_batches(split, 500):
        p = torch.stack([predict_logits(model, v).softmax(1) for v in _AD_HOC[candidate](x)]).mean(0)
        correct += int((p.argmax(1) == y).sum())
    return correct


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("runs", nargs="+", help="run folders of the best preset (each with config.toml and ema.ckpt)")
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}", flush=True)
    runs = [Path(r) for r in args.runs]
    data = [load_data(apply_overrides(load_config(r / "config.toml"), [f"data.dir={args.data_dir}"]).data) for r in runs]
    models = {r: model_from_checkpoint(read_checkpoint(r / "ema.ckpt")).eval() for r in runs}

    totals = dict.fromkeys(_VIEWS, 0)
    rows = []
    for run, d in zip(runs, data):
        row = {"run": run.name, "val images": len(d.val)}
        for c in _VIEWS:
            row[c] = _correct(models[run], d.val, c)
            totals[c] += row[c]
        rows.append(row)
        print(f"{run.name} validated", flush=True)
    rows.append({"run": "total", "val images": sum(len(d.val) for d in data), **totals})
    print("\ncorrect validation images of the weight average (ema.ckpt), by candidate:")
    print(format_table(rows))

    best = max(_VIEWS, key=lambda c: (totals[c], -_VIEWS[c]))
    chosen = best if totals[best] >= totals["tta.shift = 1"] + 2 else "tta.shift = 1"
    print(f"\nmost correct: {best} ({totals[best]}); chosen by the rule: {chosen}")
    if not chosen.startswith("tta.shift"):
        print("the chosen candidate is not a product option: no test read")
        return
    shift = int(chosen.split("=")[1])
    print(f"\ntest split, read once, with tta.shift = {shift}:")
    test_rows = []
    for run, d in zip(runs, data):
        plain = model_from_checkpoint(read_checkpoint(run / "best.ckpt"))
        test_rows.append({"run": run.name,
                          "plain+TTA %": round(100 * evaluate(plain, d.test, 500, tta_shift=shift).accuracy, 2),
                          "EMA+TTA %": round(100 * evaluate(models[run], d.test, 500, tta_shift=shift).accuracy, 2)})
    print(format_table(test_rows))
    for key in ("plain+TTA %", "EMA+TTA %"):
        values = [r[key] for r in test_rows]
        print(f"{key:<12} mean {statistics.mean(values):.3f}%  min {min(values):.2f}%  max {max(values):.2f}%")


if __name__ == "__main__":
    main()
