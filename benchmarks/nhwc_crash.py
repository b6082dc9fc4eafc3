"""Which 1x1 strided convs PyTorch's CPU backward crashes on in channels-last memory.

``train.channels_last`` unset (auto) trains the ResNets, VGGs and small CNNs in
NHWC on a CPU, except a model with a conv that ``fit.nhwc_crash_layer`` names:
a 1x1 conv with a stride above 1 and few input channels, as a narrow ResNet's
projection shortcut. On such a conv the backward pass corrupts the heap
("double free or corruption", or a segfault) and the process dies with no
Python traceback, sometimes only at an odd batch size (an epoch's last partial
batch). This script is where that rule's numbers come from.

Each case runs in a forked child, so a crash kills the child only: a 1x1 conv
of C -> 2C channels with stride 2 on a batch of B images of H x H, forward and
three backward passes, in fp32 and bf16 autocast, NHWC and NCHW, at 1 and 2
threads; every case is tried twice (the corruption does not always show).
Printed: per input channel count, the cases that crashed.

    .venv/bin/python benchmarks/nhwc_crash.py
"""

from __future__ import annotations

import itertools
import os

import torch
from torch import nn

from mnistlab.bench import benchmark_parser, machine_description, parse_benchmark_args
from mnistlab.training.fit import nhwc_crash_layer

CHANNELS = [*range(1, 21), 24, 32, 64]
SIDES = [28, 14]  # a ResNet's first two projection shortcuts on MNIST see 28x28 and 14x14 maps
BATCHES = [1, 2, 3, 4, 5]
TRIES = 2


def backward(channels: int, side: int, batch: int, precision: str, nhwc: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 2 * channels, 1, stride=2, bias=False)
    x = torch.randn(batch, channels, side, side)
    if nhwc:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = conv(x)
    for _ in range(3):
        y.float().square().sum().backward(retain_graph=True)


def crashes(threads: int, *case) -> bool:
    """Whether the case kills its process in any of TRIES forked children (an exception is not a crash)."""
    for _ in range(TRIES):
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(threads)
            try:
                backward(*case)
            except Exception:
                pass
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return True
    return False


def main() -> None:
    parse_benchmark_args(benchmark_parser(__doc__, data_dir=False))
    print(f"machine: {machine_description()}")
    print(f"1x1 conv C -> 2C, stride 2, on B x C x H x H; H in {SIDES}, B in {BATCHES}; {TRIES} tries a case")
    print()
    print("layout  C   crashed (threads/precision/H/B)                                  nhwc_crash_layer names it")
    for nhwc, channels in itertools.product((True, False), CHANNELS):
        bad = [f"{t}/{p}/{h}/{b}" for t, p, h, b in itertools.product((1, 2), ("fp32", "bf16"), SIDES, BATCHES)
               if crashes(t, channels, h, b, p, nhwc)]
        shown = " ".join(bad[:6]) + (f" (+{len(bad) - 6})" if len(bad) > 6 else "") if bad else "-"
        named = nhwc_crash_layer(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, stride=2))) is not None
        print(f"{'NHWC' if nhwc else 'NCHW'}  {channels:3d}   {shown:<64} {'yes' if named else 'no'}")


if __name__ == "__main__":
    main()
