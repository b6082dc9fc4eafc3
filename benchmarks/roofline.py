"""Target 3: training throughput of every zoo model against the machine's fp32 matmul rate.

For each model: images per second of the real ``Trainer`` (synthetic 28x28
images, second epoch of two, so warm-up is excluded), MACs per image
(``models.summary.count_macs``: convs and linear layers), the achieved training
rate GFLOP/s = 3 x 2 x MACs x images/s (a multiply-accumulate is 2 FLOPs; the
backward pass costs about twice the forward, gradients for inputs and for
weights, so a training step is ~3 forwards), and that as a fraction of the
machine's fp32 matmul rate: the faster of a 2048 x 2048 ``torch.mm`` (MKL) and
the same product in oneDNN (the convolutions' library), measured right before
the model (on a shared machine the rate moves with the load, so each fraction
uses its neighbour). The first lines give both paths' rates (on the AMD EPYC
with AVX-512 MKL's mm ran at about half of oneDNN's) and, with more than one
torch thread, the rate on one thread against all of them. Each model runs in
channels-last (NHWC) and in plain NCHW, interleaved, to show where
channels-last helps; ``train.channels_last = none`` (auto, the default) picks
NHWC on a CPU for the models marked ``channels_last_on_cpu`` from this table.

Small models train at batch 256; the big ImageNet-shaped ones (AlexNet, VGG,
ResNet on 28x28) at batch 32 and 2 steps to keep the run short. A second table
gives the small models (NHWC) at batches of 32 to 256, 5,120 images each: their
time goes to memory-bound layers (the 1-channel first conv, max-pooling), so a
batch whose feature maps stay in the core's cache might run nearer the limit.
On the AMD EPYC it did not: within each model the batches were 1.16x apart at
most, without a trend.

Those tables train in fp32 (``train.precision = fp32``), against the fp32 rate.
On a CPU with bf16 instructions (AVX512-BF16 or AMX), where ``precision = auto``
trains in bf16 autocast, a last table gives the small models in bf16: their
GFLOP/s as a fraction of the fp32 rate (what auto gains over fp32) and of the
bf16 matmul rate (the limit bf16's layers work against). Elsewhere bf16 is
emulated, and the table is left out.

The speed issue's targets are medians: in the first and last tables each
small model (not AlexNet, VGG or ResNet) is measured ``--rounds`` times (3
by default), each round against a matmul rate measured just before it, and
its row gives the median fraction and the range of the rounds' fractions
(on a shared machine a single measurement moves with the load).

    .venv/bin/python benchmarks/roofline.py [--models cnn fast] [--rounds 3]
"""

from __future__ import annotations

import torch

from mnistlab.bench import (
    benchmark_parser,
    format_table,
    machine_description,
    matmul_rates,
    parse_benchmark_args,
    roofline,
    thread_scaling,
)
from mnistlab.machine import native_bf16
from mnistlab.models import list_models

BIG = {"alexnet", "resnet18", "resnet50", "vgg11", "vgg13", "vgg16", "vgg19"}
BATCHES = (32, 64, 128, 256)


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="*", default=[m for m in list_models() if m != "vgg"],
                   help="zoo models (vgg needs a channels list; vgg11..19 cover it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3, help="measurements of each small model (the median is shown)")
    args = parse_benchmark_args(p)
    print(f"machine: {machine_description()}")
    rates = matmul_rates(device=args.device)
    print("fp32 2048 x 2048 matmul: " + ", ".join(f"{name} {r:.0f} GFLOP/s" for name, r in rates.items())
          + " (the fraction column uses the faster one, measured again before each model)")
    if args.device == "cpu" and torch.get_num_threads() > 1:
        print(thread_scaling(max(rates.values())))
    rows = []
    for name in args.models:
        batch = 32 if name in BIG else 256
        steps = 2 if name in BIG else 20
        for cl in ("true", "false"):
            row = roofline([name], batch_size=batch, steps=steps, device=args.device,
                           overrides=[f"train.channels_last={cl}"], rounds=1 if name in BIG else args.rounds)[0]
            rows.append(row)  # its layout column says which one this was
        print(f"{name} done", flush=True)
    print()
    print(format_table(rows))

    small = [m for m in args.models if m not in BIG]
    rows = []
    for name in small:
        for batch in BATCHES:
            rows += roofline([name], batch_size=batch, steps=5120 // batch, device=args.device,
                             overrides=["train.channels_last=true"])
        print(f"{name} by batch size done", flush=True)
    if rows:
        print()
        print(format_table(rows))

    if small and (native_bf16() if args.device == "cpu" else args.device.startswith("cuda")):
        rows = [roofline([name], device=args.device, precision="bf16", overrides=["train.channels_last=true"],
                         rounds=args.rounds)[0] for name in small]
        print()
        print(format_table(rows))


if __name__ == "__main__":
    main()
