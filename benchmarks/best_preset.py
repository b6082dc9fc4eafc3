"""The `best` preset (configs/best.toml) over several seeds, and the ensemble of those runs.

Each seed is a real ``mnistlab.train`` run on full MNIST (55,000 training and
5,000 validation images). The checkpoints (best.ckpt for the plain weights,
ema.ckpt for the weight average) are chosen on the validation split; the test
split is read once per model at the end of each run. Per seed it prints the
test accuracy of the plain weights, of the weight average (EMA) and of the
weight average with test-time augmentation (TTA), the epochs chosen, and the
minutes of training (the training steps only); then mean and spread, and the
ensemble of the seeds' weight averages (softmax averaged), with and without TTA.

    .venv/bin/python benchmarks/best_preset.py --data-dir ../shared/data --seeds 3 --out runs/best-preset

The run folders are kept under --out (default: a folder in runs/), so
`mnistlab compare` and `mnistlab ensemble` can be run on them afterwards.
``--existing`` trains nothing: it prints the table of the runs already under
--out (seed0, seed1, ...), from their summary.json and metrics.csv, without
the ensembles. The "EMA val %" and "EMA val loss" columns are the validation
accuracy and loss of ema.ckpt at the epoch it was chosen from: what a rule that
decides on the validation split compares. ``--first-seed N`` runs (or reads)
seeds N, N + 1, ... instead of 0, 1, ..., for a rerun on fresh seeds.
"""

from __future__ import annotations

import csv
import json
import statistics
from datetime import datetime
from pathlib import Path

from mnistlab import apply_overrides, train
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args
from mnistlab.config import load_config
from mnistlab.training.ensemble import evaluate_ensemble

PRESET = Path(__file__).resolve().parents[1] / "configs" / "best.toml"


def _row(seed: int, run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        ema_epoch = next(r for r in csv.DictReader(f) if int(r["epoch"]) == s["ema_best_epoch"])
    return {
        "seed": seed,
        "test %": round(100 * s["test_accuracy"], 2),
        "EMA %": round(100 * s["ema_test_accuracy"], 2),
        "EMA+TTA %": round(100 * s["ema_tta_test_accuracy"], 2),
        "EMA val %": round(100 * float(ema_epoch["ema_val_accuracy"]), 2),
        "EMA val loss": round(float(ema_epoch["ema_val_loss"]), 5),
        "best epoch": s["best_epoch"],
        "EMA epoch": s["ema_best_epoch"],
        "epochs": s["epochs"],
        "train min": round(s["train_seconds"] / 60, 2),
        "precision": s["precision"],
    }


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--config", default=str(PRESET))
    p.add_argument("--out", help="folder for the run folders (default runs/best-preset-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--existing", action="store_true", help="train nothing: the table of the runs under --out")
    args = parse_benchmark_args(p)
    if args.existing and not args.out:
        p.error("--existing needs --out, the folder of the runs")
    out = Path(args.out or f"runs/best-preset-{datetime.now():%Y%m%d-%H%M%S}")
    print(f"machine: {machine_description()}")
    print(f"preset: {args.config} {' '.join(args.overrides)}", flush=True)

    rows, runs = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        cfg = apply_overrides(load_config(args.config), [
            f"data.dir={args.data_dir}", f"train.seed={seed}", "train.progress=false", *args.overrides,
        ])
        run = out / f"seed{seed}"
        if not args.existing:
            train(cfg, out=run, quiet=True)
        runs.append(run)
        rows.append(_row(seed, run))
        print(f"seed {seed} done: {rows[-1]}", flush=True)

    print()
    print(format_table(rows))
    print()
    for key in ("test %", "EMA %", "EMA+TTA %", "EMA val %"):
        values = [r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key:<12} mean {statistics.mean(values):.3f}%  std {spread:.3f}  min {min(values):.2f}%  "
              f"max {max(values):.2f}%")
    losses = [r["EMA val loss"] for r in rows]
    spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
    print(f"{'EMA val loss':<12} mean {statistics.mean(losses):.5f}  std {spread:.5f}  min {min(losses):.5f}  "
          f"max {max(losses):.5f}")
    minutes = [r["train min"] for r in rows]
    print(f"training minutes per seed: mean {statistics.mean(minutes):.2f}, max {max(minutes):.2f}")
    if len(runs) > 1 and not args.existing:
        for tta, name in ((0, "EMA"), (cfg.tta.shift, "EMA+TTA")):
            ens = evaluate_ensemble(runs, ema=True, data_dir=args.data_dir, tta_shift=tta)
            print(f"ensemble of the {len(runs)} seeds ({name}): {100 * ens.accuracy:.2f}%")


if __name__ == "__main__":
    main()
