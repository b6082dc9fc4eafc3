"""`model.crop`: the `fast` preset with and without cutting the image's 2-pixel border.

MNIST's digits are scaled into a 20x20 box and centred in the 28x28 frame; the
outer 2 pixels hold 0.24% of the training set's ink (printed below, measured
here). Cropping them first makes every layer of the `fast` net smaller (conv 1:
20x20 outputs instead of 24x24; conv 2: 8x8 instead of 10x10; 4x4x32 features
instead of 5x5x24). The freed time can buy width back.

Accuracy on the validation split only (the test split picks nothing): the
preset as it was before the crop (16 and 24 kernels, no crop), then with
``crop = 2`` at the same widths and with 16 and 32 kernels; each the real
``mnistlab.train`` for ``--seeds`` seeds, the variants interleaved seed by seed.
Per run the best validation accuracy and the training seconds, then the means
and the median seconds relative to the first variant's.

    .venv/bin/python benchmarks/crop.py --data-dir /work/shared/data
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from mnistlab import apply_overrides
from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args, variant_runs
from mnistlab.config import load_config
from mnistlab.data import load_data

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = [  # (label, overrides on configs/fast.toml)
    ("16/24, no crop", ["model.channels=[16,24]", "model.crop=0"]),
    ("16/24, crop 2", ["model.channels=[16,24]", "model.crop=2"]),
    ("16/32, crop 2", ["model.channels=[16,32]", "model.crop=2"]),
]


def border_ink(images: torch.Tensor, border: int) -> float:
    """The share of all ink (pixel values) that lies in the outer ``border`` pixels of each image."""
    inner = images[..., border:images.shape[-2] - border, border:images.shape[-1] - border].sum()
    total = images.sum()
    return float((total - inner) / total)


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--seeds", type=int, default=5, help="seeds per variant")
    args = parse_benchmark_args(p)
    threads = [f"train.threads={args.threads}"] if args.threads else []
    base = apply_overrides(load_config(CONFIGS / "fast.toml"), [f"data.dir={args.data_dir}"])
    print(f"machine: {machine_description()}")
    train_images = load_data(base.data).train.images.double()
    print("share of the training images' ink in the outer border: "
          + ", ".join(f"{b} px {100 * border_ink(train_images, b):.2f}%" for b in (1, 2, 3, 4)))
    rows = variant_runs(base, VARIANTS, args.seeds, threads)
    print()
    print(format_table(rows))
    print()
    first = statistics.median(r["train s"] for r in rows if r["variant"] == VARIANTS[0][0])
    for label, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == label]
        accs, secs = [r["val acc %"] for r in mine], [r["train s"] for r in mine]
        print(f"{label}: mean validation accuracy {statistics.mean(accs):.2f}% (min {min(accs):.2f}%), "
              f"training seconds median {statistics.median(secs):.2f} ({statistics.median(secs) / first:.2f}x)")


if __name__ == "__main__":
    main()
