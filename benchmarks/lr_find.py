"""Is the range test's suggestion a good learning rate? `mnistlab lr-find` against a grid around it.

For three recipes (the default recipe; the textbook `cnn` with Adam at PyTorch's
betas and a constant rate, batch 64; LeNet-5 with SGD and momentum 0.9), run the
learning-rate range test (defaults: 1e-7 to 10 over 100 steps, on the full
55,000-image training split), then train one epoch at the suggested rate and at
0.1x, 0.3x, 3x and 10x it, each from the same seed, and print the best
validation accuracy of each. The rate is judged on the validation split only, as
a user choosing it would; the test split is not read here (``train`` tests at the
end; that number is not printed).

    .venv/bin/python benchmarks/lr_find.py --data-dir ../shared/data
"""

from __future__ import annotations

import time

from mnistlab import Config, apply_overrides
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args, time_to_accuracy
from mnistlab.training.lr_find import lr_range_test

# name: (what it is, its overrides of the default config)
RECIPES = {
    "default": ("the default recipe: fast, Adam 0.7/0.9, one-cycle, batch 256", []),
    "cnn": ("cnn, Adam 0.9/0.999, constant rate, batch 64",
            ["model.name=cnn", "optimizer.betas=[0.9, 0.999]", "schedule.name=constant", "train.batch_size=64"]),
    "lenet5": ("lenet5, SGD momentum 0.9, constant rate, batch 128",
               ["model.name=lenet5", "optimizer.name=sgd", "optimizer.momentum=0.9", "schedule.name=constant",
                "train.batch_size=128"]),
}
FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)


def main() -> None:
    args = parse_benchmark_args(benchmark_parser(__doc__))
    print(f"machine: {machine_description()}")
    print("one epoch per row, seed 0; best validation accuracy (5,000 images)\n")
    rows = []
    for name, (what, overrides) in RECIPES.items():
        cfg = apply_overrides(Config(), [f"data.dir={args.data_dir}", "train.progress=false", "train.epochs=1",
                                         *overrides])
        t0 = time.perf_counter()
        found = lr_range_test(cfg)
        print(f"{name} ({what}): suggested {found.suggestion:.1e}, lowest average loss at {found.lowest:.1e} "
              f"({len(found.lrs)} steps, {time.perf_counter() - t0:.1f} s; {found.stop_reason})", flush=True)
        for f in FACTORS:
            lr = found.suggestion * f
            r = time_to_accuracy([f"optimizer.lr={lr}"], [0], config=cfg)[0]
            rows.append({"recipe": name, "x suggestion": f, "lr": f"{lr:.1e}",
                         "val acc %": round(100 * r["val_accuracy"], 2)})
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
