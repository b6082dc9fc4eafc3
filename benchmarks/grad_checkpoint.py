"""Gradient checkpointing (train.grad_checkpoint): activation memory saved and time it costs.

For each model (default ResNet-50 and VGG-16, batch 256, 28x28 single-channel
MNIST-shaped random input, Adam as in the default config), one training step
(forward, cross-entropy, backward, optimizer step) runs with checkpointing off
and on, each in a fresh subprocess, so that one configuration's high-water mark
cannot hide the other's.

Memory. "Activation memory" is the peak during the step minus the memory just
before it. Before the step the process holds the model, its gradients' future
owner (the optimizer) and the optimizer state: that state is created with a
zero-gradient Adam step before the baseline is read, so the step's peak is the
activations kept for backward, the parameter gradients and the temporaries of
backward. On a CPU the peak is the process's maximum resident set size
(``ru_maxrss``, which only grows) after the step, and the baseline its current
resident size (``/proc/self/statm``) before it. glibc returns freed memory to
the system only for allocations it served with mmap, and after frees it raises
the size from which it does so (up to 32 MiB), after which freed activations
would stay resident and the peak would count them twice; each child therefore
runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so the resident size follows the
tensors that are alive. On CUDA, ``max_memory_allocated``
after the step minus ``memory_allocated`` before it.

Time. The first step of each process is the memory step (it also warms the
allocator); then ``--repeats`` more steps are timed and the median is reported.
The ratio is on / off. Off and on run one after the other on a shared machine,
so the ratio carries the noise of the load (the load average is printed).

    .venv/bin/python benchmarks/grad_checkpoint.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mnistlab.bench import benchmark_parser, machine_description, parse_benchmark_args
from mnistlab.config import OptimizerConfig
from mnistlab.models import build_model
from mnistlab.training.optim import build_optimizer

MiB = 2**20


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(name: str, checkpointing: bool, batch: int, repeats: int, device: str) -> dict:
    """One process, one configuration: the activation memory of a step and the median step time."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=(28, 28)).to(dev).train()
    model.set_grad_checkpointing(checkpointing)
    opt = build_optimizer(model.parameters(), OptimizerConfig(), dev)
    x = torch.rand(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    for p in model.parameters():  # create Adam's state now, so it is not counted as activation memory
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        activation = torch.cuda.max_memory_allocated() - before
    else:
        before = _rss_now()
        step()
        activation = _rss_peak() - before
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"activation_bytes": activation, "step_seconds": statistics.median(times) if times else None, "times": times}


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="+", default=["resnet50", "vgg16"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per configuration after the memory step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "ON"), help=argparse.SUPPRESS)
    args = parse_benchmark_args(p)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "on", args.batch_size, args.repeats, args.device)))
        return
    print(f"machine: {machine_description(torch.device(args.device))}")
    print(f"batch {args.batch_size}, 1x28x28 input, Adam; each configuration in a fresh process: one memory step, "
          f"then the median of {args.repeats} timed steps")
    print()
    head = f"{'model':<10} {'checkpointing':<13} {'activation MiB':>14} {'step s':>8} {'load':>5}"
    rows = [head, "-" * len(head)]
    summary = []
    for name in args.models:
        result = {}
        for mode in ("off", "on"):
            cmd = [sys.executable, __file__, "--child", name, mode, "--batch-size", str(args.batch_size),
                   "--repeats", str(args.repeats), "--device", args.device]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            result[mode] = json.loads(out.strip().splitlines()[-1])
            rows.append(f"{name:<10} {mode:<13} {result[mode]['activation_bytes'] / MiB:>14,.0f} "
                        f"{result[mode]['step_seconds']:>8.2f} {os.getloadavg()[0]:>5.1f}")
            print(rows[-1], flush=True)
        saved = 1 - result["on"]["activation_bytes"] / result["off"]["activation_bytes"]
        ratio = result["on"]["step_seconds"] / result["off"]["step_seconds"]
        summary.append(f"{name}: {100 * saved:.0f}% less activation memory, {ratio:.2f}x the step time")
    print()
    print("\n".join(rows))
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
