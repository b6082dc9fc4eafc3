"""Target 4: evaluating the 10,000 test images with the `cnn` model.

Times :func:`mnistlab.training.evaluate.evaluate` (loss, accuracy, per-class
accuracy, confusion matrix, probabilities: what ``mnistlab evaluate`` computes)
on the test split, median of 5 runs after a warm-up, for the weights after one
epoch of training (accuracy shown), in plain NCHW and channels-last, interleaved
with a 2048 x 2048 fp32 matmul so the load at the time is visible.

    .venv/bin/python benchmarks/evaluate_speed.py --data-dir /work/shared/data
"""

from __future__ import annotations


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
from mnistlab.models import build_model
from mnistlab.models.summary import count_macs
from mnistlab.training.fit import Trainer


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--batch-size", type=int, default=Config().train.eval_batch_size)
    args = parse_benchmark_args(p)
    cfg = apply_overrides(Config(), [f"data.dir={args.data_dir}", "model.name=cnn", "train.epochs=1",
                                     "train.progress=false", "train.device=cpu"])
    data = load_data(cfg.data)
    print(f"machine: {machine_description()}")
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28), mean=data.mean, std=data.std)
    model = Trainer(model, data, cfg).fit().model
    macs = count_macs(model)
    rows = []
    for _ in range(2):
        for layout in ("NHWC", "NCHW"):
            model = model.to(memory_format=torch.channels_last if layout == "NHWC" else torch.contiguous_format)
            mm = matmul_gflops()
            secs, acc = eval_seconds(model, data.test, args.batch_size, repeats=5)
            gflops = 2 * macs * len(data.test) / secs / 1e9
            rows.append({"layout": layout, "images": len(data.test), "seconds": round(secs, 3),
                         "images/s": round(len(data.test) / secs), "GFLOP/s": round(gflops, 1),
                         "matmul GFLOP/s": round(mm, 1), "fraction": f"{100 * gflops / mm:.0f}%",
                         "test acc %": round(100 * acc, 2)})
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
