"""Elastic distortion's cost: the Gaussian smoothing as two matrix products against a padded convolution.

Simard et al.'s field is uniform noise per pixel and axis, smoothed by a
Gaussian. ``mnistlab.data.augment.elastic_offsets`` smooths with two small
matrix products (the reflect padding folded into the matrices); the direct way,
kept here as the baseline, reflect-pads the noise and convolves it with the
Gaussian's taps (31 of them at sigma 5), rows then columns. Both draw the same
noise and give the same field (tests/data/test_augment.py checks it).

Times one batch of fields (the preset's batch of 128, MNIST's 28x28), the
uniform noise they are made of, and the whole augmentation of a batch (random affine, then with the field added),
the paths alternating in each of ``--rounds`` rounds; medians in milliseconds,
and per 55,000-image epoch in seconds.

    .venv/bin/python benchmarks/elastic.py
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args
from mnistlab.config import AugmentConfig
from mnistlab.data.augment import affine_matrices, augment, elastic_offsets

AFFINE = dict(enabled=True, rotation=10.0, scale=0.1, shift=0.1, shear=5.0)  # configs/best.toml's ranges


def offsets_by_convolution(n: int, size: tuple[int, int], cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """The field the direct way: reflect padding and a separable convolution (mnistlab's method until 2026-12)."""
    h, w = size
    radius = max(1, min(math.ceil(3 * cfg.elastic_sigma), min(h, w) - 1))
    taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / cfg.elastic_sigma) ** 2)
    kernel = kernel / kernel.sum()
    noise = torch.rand(n * 2, 1, h, w, device=device) * 2 - 1
    noise = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    scale = torch.tensor([2.0 / w, 2.0 / h], device=device) * cfg.elastic_alpha
    return noise.view(n, 2, h, w).permute(0, 2, 3, 1) * scale


def milliseconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--alpha", type=float, default=34.0)
    p.add_argument("--sigma", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=50, help="batches timed per path and round")
    args = parse_benchmark_args(p)
    cfg = AugmentConfig(**AFFINE, elastic_alpha=args.alpha, elastic_sigma=args.sigma)
    cpu, size = torch.device("cpu"), (28, 28)
    images = torch.rand(args.batch, 1, *size)

    def augment_by_convolution() -> torch.Tensor:  # augment() with the baseline field
        grid = F.affine_grid(affine_matrices(args.batch, cfg, cpu), [args.batch, 1, *size], align_corners=False)
        grid = grid + offsets_by_convolution(args.batch, size, cfg, cpu)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    paths = {
        "field: padded convolution": lambda: offsets_by_convolution(args.batch, size, cfg, cpu),
        "field: matrix products": lambda: elastic_offsets(args.batch, size, cfg, cpu),
        "the noise alone (both draw it)": lambda: torch.rand(args.batch * 2, *size) * 2 - 1,
        "augment, affine only": lambda: augment(images, AugmentConfig(**AFFINE)),
        "augment + field by convolution": augment_by_convolution,
        "augment + field by matrices": lambda: augment(images, cfg),
    }
    print(f"machine: {machine_description()}")
    print(f"batch {args.batch} of 28x28, alpha {args.alpha:g}, sigma {args.sigma:g}; "
          f"{args.rounds} rounds of {args.repeats} batches per path")
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            times[name].append(milliseconds(fn, args.repeats))
    batches_per_epoch = math.ceil(55_000 / args.batch)
    print()
    print(format_table([{
        "path": name,
        "ms per batch (median)": round(statistics.median(t), 2),
        "min..max ms": f"{min(t):.2f}..{max(t):.2f}",
        "s per epoch": round(statistics.median(t) * batches_per_epoch / 1e3, 2),
    } for name, t in times.items()]))


if __name__ == "__main__":
    main()
