"""The default recipe (`mnistlab train` with no options) over several seeds.

Runs the real `mnistlab.train` on full MNIST (55,000 train / 5,000 validation
images, test set once at the end) and prints test accuracy and training time
per seed, then mean and spread. The README quotes its kept outputs,
benchmarks/default_recipe*.txt (the headline: default_recipe_epyc-avx512.txt and its 12-03 rerun).

    .venv/bin/python benchmarks/default_recipe.py --data-dir ../shared/data --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from mnistlab import Config, apply_overrides, train
from mnistlab.bench import machine_description


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()

    print(f"machine: {machine_description()}")
    print(f"{'seed':>4}  {'test acc':>8}  {'train s':>7}  {'wall s':>6}  precision  stop")
    accs, secs = [], []
    for seed in range(args.seeds):
        cfg = apply_overrides(Config(), [f"data.dir={args.data_dir}", f"train.seed={seed}", "train.progress=false"])
        with tempfile.TemporaryDirectory() as tmp:
            s = train(cfg, out=f"{tmp}/run", quiet=True, report=False).summary
        accs.append(s["test_accuracy"])
        secs.append(s["train_seconds"])
        print(f"{seed:>4}  {100 * s['test_accuracy']:>7.2f}%  {s['train_seconds']:>7.1f}  {s['wall_seconds']:>6.1f}  {s['precision']:<9}  "
              f"{s['stop_reason']}")
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"mean  {100 * statistics.mean(accs):>7.2f}%  {statistics.mean(secs):>7.1f}          "
          f"(accuracy std {100 * spread:.2f} points, min {100 * min(accs):.2f}%)")


if __name__ == "__main__":
    main()
