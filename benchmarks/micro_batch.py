"""Micro-batches (train.micro_batch_size): the memory a training epoch needs, and the time it costs.

For each model (default ResNet-18 and VGG-11 at full width, batch 256, real MNIST, Adam, fp32), one epoch of
two batches runs through mnistlab's Trainer with the whole batch in one pass, and in parts of 64 images
(4 parts a batch, one optimizer step each batch), each configuration in a fresh process.

Memory: the process's peak resident size during the epoch (``ru_maxrss``, which only grows) minus its resident
size just before it; the model is built and the data loaded before. Each child runs with
``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc hands freed activations back and the resident size follows
the tensors alive (see grad_checkpoint.py). The epoch's first step also creates Adam's state, the same in
both configurations.

Time: the epoch's training seconds per step (train_seconds / steps), in the same children; each configuration
runs ``--repeats`` times, alternating, and the medians are compared, as absolute times follow the load on a
shared machine.

    .venv/bin/python benchmarks/micro_batch.py --data-dir ../shared/data --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import torch

from mnistlab.bench import benchmark_parser, machine_description, parse_benchmark_args
from mnistlab.config import Config, apply_overrides
from mnistlab.data import load_data
from mnistlab.training.fit import Trainer
from mnistlab.training.run import config_model

MiB = 2**20


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> dict:
    """One epoch of two batches; the bytes it added at its peak and its seconds per step."""
    micro = args.micro if args.micro > 0 else "none"
    cfg = apply_overrides(Config(), [
        f"data.dir={args.data_dir}", "data.download=false", f"data.train_limit={2 * args.batch_size}",
        "data.val_size=100", f"model.name={args.model}", f"train.batch_size={args.batch_size}", "train.epochs=1",
        "train.precision=fp32", f"train.micro_batch_size={micro}", "train.progress=false",
        "tensorboard.enabled=false", "schedule.name=constant",
    ])
    torch.manual_seed(0)
    data = load_data(cfg.data)
    trainer = Trainer(config_model(cfg, data), data, cfg)
    before = _rss_now()
    result = trainer.fit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # Linux reports KiB
    return {"mib": peak / MiB, "step_s": result.train_seconds / result.steps}


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg11"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--micro", type=int, default=64, help="the part size to compare with whole batches")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    args = parse_benchmark_args(p)
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"machine: {machine_description()}")
    print(f"batch {args.batch_size}, one epoch of 2 batches through the Trainer, Adam, fp32; parts of {args.micro}; "
          f"each configuration {args.repeats}x in a fresh process, alternating\n")
    print(f"{'model':<10} {'parts':>6} {'peak MiB':>9} {'step s':>7}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    summary = []
    for model in args.models:
        runs: dict[int, list[dict]] = {0: [], args.micro: []}
        for _ in range(args.repeats):
            for micro in runs:
                cmd = [sys.executable, __file__, "--child", "--model", model, "--micro", str(micro),
                       "--batch-size", str(args.batch_size), "--data-dir", args.data_dir]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                runs[micro].append(json.loads(out.strip().splitlines()[-1]))
                r = runs[micro][-1]
                print(f"{model:<10} {micro or 'whole':>6} {r['mib']:>9,.0f} {r['step_s']:>7.2f}", flush=True)
        whole, parts = ({k: statistics.median(r[k] for r in runs[m]) for k in ("mib", "step_s")}
                        for m in (0, args.micro))
        summary.append(f"{model}: parts of {args.micro} need {100 * (1 - parts['mib'] / whole['mib']):.0f}% less "
                       f"memory ({parts['mib']:,.0f} against {whole['mib']:,.0f} MiB, medians), "
                       f"{parts['step_s'] / whole['step_s']:.2f}x the step time")
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
