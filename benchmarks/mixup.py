"""`[mixup]`: the `fast` preset trained longer with and without mixup and CutMix.

Mixing regularizes: it pays, if at all, where a run trains long enough to
overfit, so each variant trains the preset for ``--epochs`` epochs (its
one-cycle schedule spans them) instead of its one. Accuracy on the validation
split only (the test split picks nothing); each variant is the real
``mnistlab.train`` for ``--seeds`` seeds, the variants interleaved seed by seed.
Per run the best validation accuracy and the training seconds, then the means.

    .venv/bin/python benchmarks/mixup.py --data-dir /work/shared/data
"""

from __future__ import annotations

import statistics
from pathlib import Path

from mnistlab import apply_overrides
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args, variant_runs
from mnistlab.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = [  # (label, overrides on configs/fast.toml)
    ("no mixing", []),
    ("mixup 0.2", ["mixup.alpha=0.2"]),
    ("CutMix 1.0", ["mixup.cutmix_alpha=1.0"]),
]


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run")
    args = parse_benchmark_args(p)
    threads = [f"train.threads={args.threads}"] if args.threads else []
    base = apply_overrides(load_config(CONFIGS / "fast.toml"), [f"data.dir={args.data_dir}",
                                                                f"train.epochs={args.epochs}"])
    print(f"machine: {machine_description()}; configs/fast.toml for {args.epochs} epochs")
    rows = variant_runs(base, VARIANTS, args.seeds, threads)
    print()
    print(format_table(rows))
    print()
    for label, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == label]
        accs = [r["val acc %"] for r in mine]
        print(f"{label}: mean validation accuracy {statistics.mean(accs):.2f}% (min {min(accs):.2f}%, max "
              f"{max(accs):.2f}%), training seconds median {statistics.median(r['train s'] for r in mine):.1f}")


if __name__ == "__main__":
    main()
