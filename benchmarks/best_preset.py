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
"""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path

from mnistlab import apply_overrides, train
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args
from mnistlab.config import load_config
from mnistlab.training.ensemble import evaluate_ensemble

PRESET = Path(__file__).resolve().parents[1] / "configs" / "best.toml"


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--config", default=str(PRESET))
    p.add_argument("--out", help="folder for the run folders (default runs/best-preset-<time>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parse_benchmark_args(p)
    out = Path(args.out or f"runs/best-preset-{datetime.now():%Y%m%d-%H%M%S}")
    print(f"machine: {machine_description()}")
    print(f"preset: {args.config} {' '.join(args.overrides)}", flush=True)

    rows, runs = [], []
    for seed in range(args.seeds):
        cfg = apply_overrides(load_config(args.config), [
            f"data.dir={args.data_dir}", f"train.seed={seed}", "train.progress=false", *args.overrides,
        ])
        run = out / f"seed{seed}"
        s = train(cfg, out=run, quiet=True).summary
        runs.append(run)
        rows.append({
            "seed": seed,
            "test %": round(100 * s["test_accuracy"], 2),
            "EMA %": round(100 * s["ema_test_accuracy"], 2),
            "EMA+TTA %": round(100 * s["ema_tta_test_accuracy"], 2),
            "best epoch": s["best_epoch"],
            "EMA epoch": s["ema_best_epoch"],
            "epochs": s["epochs"],
            "train min": round(s["train_seconds"] / 60, 1),
            "precision": s["precision"],
        })
        print(f"seed {seed} done: {rows[-1]}", flush=True)

    print()
    print(format_table(rows))
    print()
    for key in ("test %", "EMA %", "EMA+TTA %"):
        values = [r[key] for r in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key:<10} mean {statistics.mean(values):.3f}%  std {spread:.3f}  min {min(values):.2f}%  "
              f"max {max(values):.2f}%")
    minutes = [r["train min"] for r in rows]
    print(f"training minutes per seed: mean {statistics.mean(minutes):.1f}, max {max(minutes):.1f}")
    if len(runs) > 1:
        for tta, name in ((0, "EMA"), (cfg.tta.shift, "EMA+TTA")):
            ens = evaluate_ensemble(runs, ema=True, data_dir=args.data_dir, tta_shift=tta)
            print(f"ensemble of the {len(runs)} seeds ({name}): {100 * ens.accuracy:.2f}%")


if __name__ == "__main__":
    main()
