"""`model.bn_after_pool`: batch norm after the pool (conv -> pool -> BN -> ReLU) against before it.

Two parts, both on this machine, in one run:

1. Training rate. For three shapes of the conv-pool models with batch norm --
   the `fast` preset's as it was then (16 and 24 kernels, no crop, batch 256), the
   `best` preset's (configs/best.toml: 64, 128, 256 3x3 kernels, batch 128) and
   `cnn` with batch norm at the peers benchmark's batch 64 -- images per second
   of the real ``Trainer`` (``mnistlab.bench.training_rate``: random images,
   second epoch of ``--steps`` steps) with the option off and on, interleaved
   (off, on, off, on, ...) for ``--repeats`` rounds; medians and the ratio.
2. Accuracy, on the validation split only (the test split picks nothing):
   configs/fast.toml as it was then (16 and 24 kernels, no crop: PRESET_THEN)
   trained with the option off and on for ``--seeds`` seeds
   each (seeds interleaved), each the real ``mnistlab.train``; per seed the best
   validation accuracy and the training seconds, then the means.

    .venv/bin/python benchmarks/bn_after_pool.py --data-dir /work/shared/data
"""

from __future__ import annotations

import statistics
from pathlib import Path

from mnistlab import apply_overrides
from mnistlab.bench import (
    benchmark_parser,
    format_table,
    machine_description,
    parse_benchmark_args,
    time_to_accuracy,
    training_rate,
)
from mnistlab.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (label, model, batch, model overrides): the presets' shapes, plus cnn at the peers benchmark's batch
SHAPES = [
    ("fast preset", "fast", 256, ["model.channels=[16,24]", "model.batch_norm=true"]),
    ("best preset", "cnn", 128, ["model.channels=[64,128,256]", "model.kernel_size=3", "model.batch_norm=true",
                                 "model.hidden=[256]", "model.dropout=0.3"]),
    ("cnn + BN", "cnn", 64, ["model.batch_norm=true"]),
]


def rates(args) -> list[dict]:
    threads = [f"train.threads={args.threads}"] if args.threads else []
    rows = []
    for label, model, batch, opts in SHAPES:
        got: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for after in (False, True):
                got[after].append(training_rate(model, batch_size=batch, steps=args.steps,
                                                overrides=[*opts, f"model.bn_after_pool={str(after).lower()}", *threads]))
        off, on = statistics.median(got[False]), statistics.median(got[True])
        rows.append({"model": label, "batch": batch, "before pool images/s": round(off),
                     "after pool images/s": round(on), "step time after / before": round(off / on, 2)})
        print(f"{label} done", flush=True)
    return rows


# The preset's shape when this was measured; configs/fast.toml has since taken crop = 2 and 32 kernels.
PRESET_THEN = ["model.channels=[16,24]", "model.crop=0"]


def accuracy(args) -> list[dict]:
    threads = [f"train.threads={args.threads}"] if args.threads else []
    base = apply_overrides(load_config(CONFIGS / "fast.toml"), PRESET_THEN)
    rows = []
    for seed in range(args.seeds):
        for after in (False, True):
            run = time_to_accuracy([f"data.dir={args.data_dir}", f"model.bn_after_pool={str(after).lower()}",
                                    *threads], [seed], config=base)[0]
            rows.append({"seed": seed, "BN": "after pool" if after else "before pool",
                         "val acc %": round(100 * run["val_accuracy"], 2),
                         "train s": round(run["train_seconds"], 2)})
        print(f"seed {seed} done", flush=True)
    return rows


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the training-rate part")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per rate measurement")
    p.add_argument("--seeds", type=int, default=5, help="seeds per setting in the accuracy part")
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}")
    rate_rows = rates(args)
    acc_rows = accuracy(args)
    print()
    print(format_table(rate_rows))
    print()
    print(format_table(acc_rows))
    print()
    for where in ("before pool", "after pool"):
        mine = [r for r in acc_rows if r["BN"] == where]
        accs, secs = [r["val acc %"] for r in mine], [r["train s"] for r in mine]
        print(f"fast preset, BN {where}: mean validation accuracy {statistics.mean(accs):.2f}% "
              f"(min {min(accs):.2f}%), training seconds median {statistics.median(secs):.2f}")


if __name__ == "__main__":
    main()
