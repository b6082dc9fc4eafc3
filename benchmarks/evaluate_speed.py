"""Target 4: evaluating the 10,000 test images with the `cnn` model.

Times :func:`mnistlab.training.evaluate.evaluate` (loss, accuracy, per-class
accuracy, confusion matrix, probabilities: what ``mnistlab evaluate`` computes)
on the test split, median of 5 runs after a warm-up, for the weights after one
epoch of training (accuracy shown), interleaved with a 2048 x 2048 fp32 matmul
so the load at the time is visible. Three paths: the product's default on a CPU
(``oneDNN``: the conv stack in oneDNN's blocked layout, :meth:`Net.inference_forward`),
and the plain forward in channels-last (``NHWC``) and in ``NCHW``.

A second table asks, per zoo model (untrained, in the layout it trains in),
whether the oneDNN path is faster than its plain forward (500 test images, 3
alternating repeats; ``--zoo-images``, ``--zoo-repeats``, ``--models``);
``Net.onednn_eval_on_cpu`` is set for the models where it was in every run.
``--zoo-only`` prints that table alone.

    .venv/bin/python benchmarks/evaluate_speed.py --data-dir /work/shared/data
    .venv/bin/python benchmarks/evaluate_speed.py --data-dir /work/shared/data --zoo-only --models lenet vgg11
"""

from __future__ import annotations


import statistics

import torch

from mnistlab import Config, apply_overrides
from mnistlab.bench import (
    benchmark_parser,
    eval_seconds,
    format_table,
    machine_description,
    matmul_gflops,
    parse_benchmark_args,
)
from mnistlab.data import load_data
from mnistlab.data.datasets import Split
from mnistlab.models import build_model
from mnistlab.models.summary import count_macs
from mnistlab.training.fit import Trainer, use_channels_last

ZOO = ("cnn", "fast", "lenet", "lenet5", "vgg11", "alexnet", "resnet18")


def zoo_rows(data, models, images: int, batch_size: int, repeats: int) -> list[dict]:
    """Seconds of evaluate with the oneDNN path forced on and off, per zoo model."""
    split = Split(data.test.images[:images], data.test.labels[:images])
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=1, image_size=(28, 28), mean=data.mean, std=data.std)
        chosen = model.onednn_eval_on_cpu
        nhwc = use_channels_last(None, model, torch.device("cpu"))
        if nhwc:
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        model.onednn_eval_on_cpu = True
        with torch.no_grad():
            possible = model.inference_forward() is not model
        row = {"model": name, "layout": "NHWC" if nhwc else "NCHW",
               "images": images, "oneDNN s": "-", "plain s": "-", "oneDNN / plain": "no oneDNN path",
               "set": str(chosen).lower()}
        if possible:
            on, off = [], []
            for _ in range(repeats):  # alternating, so both see the same load
                model.onednn_eval_on_cpu = True
                on.append(eval_seconds(model, split, batch_size, repeats=1)[0])
                model.onednn_eval_on_cpu = False
                off.append(eval_seconds(model, split, batch_size, repeats=1)[0])
            a, b = statistics.median(on), statistics.median(off)
            row.update({"oneDNN s": round(a, 3), "plain s": round(b, 3), "oneDNN / plain": f"{a / b:.2f}"})
        rows.append(row)
        print(f"{name} done", flush=True)
    return rows


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--batch-size", type=int, default=Config().train.eval_batch_size)
    p.add_argument("--zoo-images", type=int, default=500)
    p.add_argument("--zoo-repeats", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(ZOO), choices=ZOO)
    p.add_argument("--zoo-only", action="store_true")
    args = parse_benchmark_args(p)
    cfg = apply_overrides(Config(), [f"data.dir={args.data_dir}", "model.name=cnn", "train.epochs=1",
                                     "train.progress=false", "train.device=cpu"])
    data = load_data(cfg.data)
    print(f"machine: {machine_description()}")
    if args.zoo_only:
        print(format_table(zoo_rows(data, args.models, args.zoo_images, args.batch_size, args.zoo_repeats)))
        return
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), mean=data.mean, std=data.std)
    model = Trainer(model, data, cfg).fit().model
    macs = count_macs(model)
    rows = []
    for _ in range(3):
        for layout in ("oneDNN", "NHWC", "NCHW"):
            model = model.to(memory_format=torch.contiguous_format if layout == "NCHW" else torch.channels_last)
            model.onednn_eval_on_cpu = layout == "oneDNN"
            mm = matmul_gflops()
            secs, acc = eval_seconds(model, data.test, args.batch_size, repeats=5)
            gflops = 2 * macs * len(data.test) / secs / 1e9
            rows.append({"path": layout, "images": len(data.test), "seconds": round(secs, 3),
                         "images/s": round(len(data.test) / secs), "GFLOP/s": round(gflops, 1),
                         "matmul GFLOP/s": round(mm, 1), "fraction": f"{100 * gflops / mm:.0f}%",
                         "test acc %": round(100 * acc, 2)})
    print()
    print(format_table(rows))
    print()
    print(format_table(zoo_rows(data, args.models, args.zoo_images, args.batch_size, args.zoo_repeats)))


if __name__ == "__main__":
    main()
