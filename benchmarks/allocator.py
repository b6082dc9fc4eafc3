"""Training steps with and without ``train.reuse_memory`` (glibc's malloc keeping freed memory).

The setting is process-wide and cannot be undone, so every measurement runs in
its own Python process: the real ``Trainer`` on synthetic 28x28 images
(``bench.training_rate``: images per second of the second epoch; the first warms
up), with ``train.reuse_memory`` false or true. The two alternate (off, on,
off, on, ...) and the table gives medians and their ratio. Linux with glibc
only: elsewhere the setting does nothing.

    .venv/bin/python benchmarks/allocator.py --repeats 5
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import torch

from mnistlab.bench import benchmark_parser, format_table, machine_description, parse_benchmark_args

# (model, batch, steps): the peers benchmark's case, the roofline's small models, one big model.
CASES = [("cnn", 64, 80), ("cnn", 256, 20), ("fast", 256, 20), ("lenet5", 256, 20), ("resnet18", 32, 3)]

CHILD = """
import json, sys, torch
from mnistlab.bench import training_rate
model, batch, steps, reuse, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
print(json.dumps(training_rate(model, batch_size=batch, steps=steps, overrides=[f"train.reuse_memory={reuse}"])))
"""


def rate(model: str, batch: int, steps: int, reuse: bool) -> float:
    args = [model, str(batch), str(steps), str(reuse).lower(), str(torch.get_num_threads())]
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--repeats", type=int, default=5)
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}")
    print(f"images/s of training, each in a fresh process, off and on alternating, {args.repeats} repeats, medians\n")
    rows = []
    for model, batch, steps in CASES:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for reuse in (False, True):
                rates[reuse].append(rate(model, batch, steps, reuse))
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        rows.append({"model": model, "batch": batch, "images/s off": round(off), "images/s on": round(on),
                     "on / off": round(on / off, 2),
                     "on range": f"{min(rates[True]):.0f}..{max(rates[True]):.0f}",
                     "off range": f"{min(rates[False]):.0f}..{max(rates[False]):.0f}"})
        print(f"{model} batch {batch} done", flush=True)
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
