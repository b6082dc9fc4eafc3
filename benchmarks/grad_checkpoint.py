"""Gradient checkpointing (train.grad_checkpoint): activation memory saved and time it costs.

For each model (default ResNet-50 and VGG-16, batch 256, 28x28 single-channel
MNIST-shaped random input, Adam as in the default config), one training step
(forward, cross-entropy, backward, optimizer step) runs with checkpointing off
and on, each in a fresh subprocess, so that one configuration's high-water mark
cannot hide the other's.

Memory, two numbers per configuration, each the peak during one step minus the
memory just before it. Before the step the process holds the model and the
optimizer state (created with a zero-gradient Adam step before the baseline is
read). "Step MiB" is what the trainer's step adds: the activations kept for
backward, the temporaries of backward and the parameter gradients, which the
trainer frees between steps (``zero_grad(set_to_none=True)``). "Activation MiB"
is the same step with the parameter gradients already allocated (kept from the
previous step), so it counts only what checkpointing is about: activations and
backward's temporaries. The split matters: the parameter gradients are the same
size either way, but they count at different moments -- without checkpointing
the peak comes at the start of backward, before most gradients exist; with it,
at the end, recomputing the full-resolution first blocks, when all of them do. On a CPU the peak is the process's maximum resident set size
(``ru_maxrss``, which only grows) after the step, and the baseline its current
resident size (``/proc/self/statm``) before it. glibc returns freed memory to
the system only for allocations it served with mmap, and after frees it raises
the size from which it does so (up to 32 MiB), after which freed activations
would stay resident and the peak would count them twice; each child therefore
runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so the resident size follows the
tensors that are alive. On CUDA, ``max_memory_allocated``
after the step minus ``memory_allocated`` before it.

Time. One more process builds the model once and alternates steps with
checkpointing off and on (one warm-up round, then ``--repeats`` rounds); the
medians and their ratio on / off are reported. Alternating keeps the ratio
honest on a shared machine, where absolute times follow the load (the load
average is printed).

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


def _setup(name: str, batch: int, device: str, keep_grads: bool):
    """A zoo model, its optimizer with Adam's state already created, one batch, and a training step."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, image_size=(28, 28)).to(dev).train()
    opt = build_optimizer(model.parameters(), OptimizerConfig(), dev)
    x = torch.rand(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    for p in model.parameters():  # create Adam's state now, so it is not counted as activation memory
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=not keep_grads)

    def step() -> None:
        opt.zero_grad(set_to_none=not keep_grads)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return model, step


def memory_child(name: str, checkpointing: bool, batch: int, device: str, keep_grads: bool) -> int:
    """Bytes one training step adds at its peak, in a fresh process (one configuration per process).

    ``keep_grads``: the parameter gradients exist before the step (activation memory
    alone); otherwise they are created during it, as in the trainer.
    """
    model, step = _setup(name, batch, device, keep_grads)
    model.set_grad_checkpointing(checkpointing)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_now()
    step()
    return _rss_peak() - before


def time_child(name: str, batch: int, device: str, repeats: int) -> dict:
    """Median step seconds with checkpointing off and on, alternating in one process.

    Alternating step by step puts both configurations under the same load, so
    their ratio holds on a shared machine even when the absolute times do not.
    """
    model, step = _setup(name, batch, device, keep_grads=False)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(repeats + 1):
        for mode in ("off", "on"):
            model.set_grad_checkpointing(mode == "on")
            t0 = time.perf_counter()
            step()
            if i:  # the first round warms up both paths
                times[mode].append(time.perf_counter() - t0)
    return {mode: statistics.median(t) for mode, t in times.items()}


def _run_child(args, *child: str) -> dict | int:
    cmd = [sys.executable, __file__, "--child", *child, "--batch-size", str(args.batch_size),
           "--repeats", str(args.repeats), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="+", default=["resnet50", "vgg16"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per configuration, after one warm-up each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parse_benchmark_args(p)
    if args.child:
        if args.child[0] == "time":
            print(json.dumps(time_child(args.child[1], args.batch_size, args.device, args.repeats)))
        else:
            name, mode, grads = args.child[1:]
            print(json.dumps(memory_child(name, mode == "on", args.batch_size, args.device, grads == "keep")))
        return
    print(f"machine: {machine_description(torch.device(args.device))}")
    print(f"batch {args.batch_size}, 1x28x28 input, Adam; memory: one step per fresh process; time: median of "
          f"{args.repeats} steps per configuration, off and on alternating in one process")
    print()
    head = f"{'model':<10} {'checkpointing':<13} {'activation MiB':>14} {'step MiB':>9} {'step s':>8} {'load':>5}"
    rows = [head, "-" * len(head)]
    summary = []
    for name in args.models:
        memory = {(mode, grads): _run_child(args, "memory", name, mode, grads)
                  for mode in ("off", "on") for grads in ("keep", "free")}
        seconds = _run_child(args, "time", name)
        for mode in ("off", "on"):
            rows.append(f"{name:<10} {mode:<13} {memory[mode, 'keep'] / MiB:>14,.0f} "
                        f"{memory[mode, 'free'] / MiB:>9,.0f} {seconds[mode]:>8.2f} {os.getloadavg()[0]:>5.1f}")
            print(rows[-1], flush=True)
        saved = 1 - memory["on", "keep"] / memory["off", "keep"]
        saved_step = 1 - memory["on", "free"] / memory["off", "free"]
        summary.append(f"{name}: {100 * saved:.0f}% less activation memory ({100 * saved_step:.0f}% less step memory "
                       f"with the parameter gradients), {seconds['on'] / seconds['off']:.2f}x the step time")
    print()
    print("\n".join(rows))
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
