"""PyTorch's fused optimizer kernels against the multi-tensor (foreach) ones, on the CPU.

PyTorch has fused steps (one kernel over all parameters) for SGD, Adam, AdamW
and Adagrad on the CPU, which mnistlab takes. This measures, for each zoo
model's parameters with made-up gradients, the time of one optimizer step with
``foreach=True`` and with ``fused=True``, interleaved over ``--rounds`` rounds
(the median of each round's mean over ``--steps`` steps), and what one whole
training step takes (the real ``Trainer`` on synthetic images, SGD, batch 64
for the small models and 32 for the ImageNet-shaped ones), so that the saving
can be read as a share of it.
The last column is the largest difference between the weights after
``--steps`` steps of the two kernels from the same start: the two round
differently.

    .venv/bin/python benchmarks/fused_optimizers.py
"""

from __future__ import annotations

import statistics
import time

import torch

from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args, training_rate
from mnistlab.models import build_model

BIG = {"alexnet", "resnet18", "resnet50", "vgg11", "vgg13", "vgg16", "vgg19"}
OPTIMIZERS = {
    "sgd": lambda params, **kind: torch.optim.SGD(params, lr=0.01, momentum=0.9, **kind),
    "adagrad": lambda params, **kind: torch.optim.Adagrad(params, lr=0.01, **kind),
    "adam": lambda params, **kind: torch.optim.Adam(params, lr=0.01, **kind),
}


def copies(model: torch.nn.Module, grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    for p, g in zip(params, grads):
        p.grad = g
    return params


def step_ms(optimizer: torch.optim.Optimizer, steps: int) -> float:
    optimizer.step()  # the state is made in the first step
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="*", default=["cnn", "fast", "lenet5", "resnet18", "vgg11"])
    p.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved foreach/fused rounds")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps timed per round")
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name)
        grads = [torch.randn_like(p) * 1e-2 for p in model.parameters()]
        batch = 32 if name in BIG else 64
        step = batch / training_rate(name, batch_size=batch, steps=4 if name in BIG else 20,
                                     overrides=["optimizer.name=sgd"]) * 1e3
        for opt in args.optimizers:
            times: dict[str, list[float]] = {"foreach": [], "fused": []}
            for _ in range(args.rounds):
                for kind in times:
                    optimizer = OPTIMIZERS[opt](copies(model, grads), **{kind: True})
                    times[kind].append(step_ms(optimizer, args.steps))
            ends = {}
            for kind in times:
                params = copies(model, grads)
                optimizer = OPTIMIZERS[opt](params, **{kind: True})
                for _ in range(args.steps):
                    optimizer.step()
                ends[kind] = params
            diff = max((a - b).abs().max().item() for a, b in zip(ends["foreach"], ends["fused"]))
            foreach, fused = statistics.median(times["foreach"]), statistics.median(times["fused"])
            rows.append({"model": name, "parameters": sum(p.numel() for p in model.parameters()),
                         "optimizer": opt, "foreach ms": round(foreach, 3), "fused ms": round(fused, 3),
                         "fused / foreach": round(fused / foreach, 2), "training step ms": round(step, 1),
                         "saving / step": f"{(foreach - fused) / step:.1%}", "max weight difference": f"{diff:.1e}"})
        print(f"{name} done", flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
