"""Where a training step's time goes, layer by layer, and why ``fast`` stays under target 3's 60%.

Part 1 times each layer of the real ``Trainer``'s step (the second epoch of
two on synthetic 28x28 images, batch 256, as ``benchmarks/roofline.py`` times
it), forward and backward, with module hooks: a forward pre-hook and hook
around each layer's forward; a backward pre-hook (the gradient of the layer's
output is ready) and the backward hook or, for the first layer, whose input
needs no gradient, its parameters' gradient hooks, around its backward. Each
row has the layer's milliseconds per step (medians over the steps of 3 runs),
its share of the step and, for convs and linear layers, the GFLOP/s it
reached (forward: 2 x MACs; backward: twice that, or once for the first
layer, which computes only its weights' gradient). "the rest" is the step's
time outside the layers: loss, optimizer step, batching. The hooks cost time
of their own, so the rows add up to the step with them; the first line gives
both (medians of 3 runs without and 3 with the hooks, interleaved), and the
step's rate by roofline.py's measure, from the step without them, as a
fraction of the fp32 matmul rate (the median of 3, one before each pair of
runs: on a shared machine the rate moves with the load).
``torch.profiler`` was not used: it put 2.5-3x the hooks' milliseconds on the
forward passes of ``fast``'s first conv and max-pool (3.5-4.2 ms against
1.3-1.5 ms in one step).

The share of the step is what decides the fraction of the matmul rate that
roofline.py reports: a layer that moves many bytes for few FLOPs (the first
conv's 1-channel input, the max-pool after it) holds the whole step back.

Part 2 times the first max-pool of ``fast`` (2x2 on a 256 x 24 x 24 x 24 map,
channels-last, the step's dtype) forward and backward in isolation, three
ways that give the same outputs and gradients (checked here, ties included):
PyTorch's ``max_pool2d`` (what the models use), the same pool written with
tensor views (``torch.maximum`` over the four positions of each window, and a
backward that sends each window's gradient to its first maximum, as
PyTorch's does), and ``torch.compile`` of ``max_pool2d`` (where a C++
compiler is present). Whether any replacement beats PyTorch's kernel decides
whether the pool's share of the step can shrink without writing a fused
kernel of one's own. Part 3 times PyTorch's pool alone on maps of 16, 24
and 32 channels, per input value: what the pool would cost after a first
conv of another width.

Part 4 times ``fast``'s whole first block (conv 1->24 5x5, 2x2 max-pool, ReLU;
its input, the images, needs no gradient) forward and backward, as the models
build it and two ways that compute the same function with the same weights
from PyTorch's own kernels, each an attempt to do without the pool's zero fill
and scatter: "im2col" lays out the 5x5 patches of each pool window's four
positions, one matmul gives the conv at all four, and the pool is a max over
them; "polyphase" gives the conv's output at each of the four positions as
its own group of channels of one conv on the image's 2x2 pixel-unshuffled
(4-channel, 14x14) form, with each 5x5 kernel placed at the position's offset
in a 6x6 one, and the pool is a max over the four groups. Both take the max
with its index and send the gradient back with it, in one pass of their own
(``WindowMaxRelu``). Whether either beats the layers decides whether the
block can get faster without a kernel of one's own.

    .venv/bin/python benchmarks/step_profile.py [--models fast cnn] [--precision bf16]

``--models`` with no names runs parts 2 to 4 only.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
import warnings
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.bench import (
    benchmark_parser,
    format_table,
    machine_description,
    matmul_gflops,
    parse_benchmark_args,
    training_rate,
)
from mnistlab.callbacks.base import Callback
from mnistlab.machine import native_bf16
from mnistlab.models import build_model
from mnistlab.models.summary import count_macs

BATCH = 256
STEPS = 20
ROUNDS = 3


class LayerTimer(Callback):
    """Times each leaf module's forward and backward in the training steps of one epoch (the second: the
    first allocates and warms up)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.on = epoch, False
        self.layers: dict[str, nn.Module] = {}
        self.times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.flops: dict[str, float] = {}  # per image, forward
        self.input_grad: dict[str, bool] = {}
        self._start: dict[tuple[str, str], float] = {}
        self._end: dict[str, float] = {}

    def on_train_begin(self, trainer) -> None:
        self.layers = {name: m for name, m in trainer.model.named_modules() if not list(m.children())}
        for name, m in self.layers.items():
            m.register_forward_pre_hook(lambda m, args, name=name: self._forward_begins(name, m, args))
            m.register_forward_hook(lambda m, args, out, name=name: self._forward_ends(name, m, args, out))
            m.register_full_backward_pre_hook(lambda m, g, name=name: self._mark(("bwd", name)))
            m.register_full_backward_hook(lambda m, gi, go, name=name: self._backward_ends(name))
            for p in m.parameters(recurse=False):  # the first layer's backward ends with its weights' gradients
                p.register_post_accumulate_grad_hook(lambda p, name=name: self._backward_ends(name, params=True))

    def _mark(self, key: tuple[str, str]) -> None:
        self._start[key] = time.perf_counter()

    def _forward_begins(self, name: str, m: nn.Module, args: tuple) -> None:
        if m.training:  # validation's passes run without gradients: not what the training step computes
            self.input_grad[name] = args[0].requires_grad
        self._mark(("fwd", name))

    def _forward_ends(self, name: str, m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if self.on and m.training:
            self.times[("fwd", name)].append(time.perf_counter() - self._start[("fwd", name)])
        if name not in self.flops:
            per_image = out[0].numel() * m.weight[0].numel() if isinstance(m, nn.Conv2d) else (
                m.in_features * m.out_features if isinstance(m, nn.Linear) else 0)
            self.flops[name] = 2.0 * per_image

    def _backward_ends(self, name: str, params: bool = False) -> None:
        # Without an input gradient the backward hook fires as the layer's backward begins; its parameters'
        # gradient hooks then say when it ends. With one, the backward hook fires after both.
        if params != self.input_grad.get(name, True):
            self._end[name] = time.perf_counter()

    def on_batch_end(self, step: int, metrics: dict[str, float], trainer) -> None:
        if self.on:
            for name in self._end:
                self.times[("bwd", name)].append(self._end[name] - self._start[("bwd", name)])
        self._end.clear()

    def on_epoch_begin(self, epoch: int, trainer) -> None:
        self.on = epoch == self.epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer) -> None:
        self.on = False


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return f"conv {m.in_channels}->{m.out_channels} {m.kernel_size[0]}x{m.kernel_size[1]}"
    if isinstance(m, nn.Linear):
        return f"linear {m.in_features}->{m.out_features}"
    if isinstance(m, nn.MaxPool2d):
        return f"max-pool {m.kernel_size}x{m.kernel_size}" if isinstance(m.kernel_size, int) else "max-pool"
    return type(m).__name__


def layer_times(model_name: str, precision: str) -> tuple[list[dict[str, Any]], float, float, float]:
    """One row per layer of ``model_name``'s training step, the step's milliseconds without and with the hooks,
    and the fp32 matmul rate (GFLOP/s, measured before each round)."""
    def fit(timer: LayerTimer | None) -> float:
        """The step's milliseconds (bench.training_rate's run: the second epoch of two, synthetic images)."""
        with warnings.catch_warnings():
            # The first layer's backward hook fires early (its input needs no gradient); LayerTimer knows.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            ips = training_rate(model_name, batch_size=BATCH, steps=STEPS, callbacks=[timer] if timer else [],
                                overrides=[f"train.precision={precision}"])
        return 1000 * BATCH / ips

    # Interleaved, so that both see the same load; the layers' times are pooled over the hooked rounds.
    plain, hooked, rates, times = [], [], [], defaultdict(list)
    for _ in range(ROUNDS):
        rates.append(matmul_gflops())
        plain.append(fit(None))
        timer = LayerTimer(2)
        hooked.append(fit(timer))
        for key, v in timer.times.items():
            times[key] += v
    plain_ms, hooked_ms, mm = statistics.median(plain), statistics.median(hooked), statistics.median(rates)
    med = {key: 1000 * statistics.median(v) for key, v in times.items()}
    rows, inside = [], 0.0
    for name, m in timer.layers.items():
        fwd, bwd = med.get(("fwd", name), 0.0), med.get(("bwd", name), 0.0)
        inside += fwd + bwd
        flops = timer.flops[name] * BATCH * (1 + (2 if timer.input_grad[name] else 1))
        rows.append({"layer": name, "what": _describe(m), "fwd ms": round(fwd, 2), "bwd ms": round(bwd, 2),
                     "share": f"{100 * (fwd + bwd) / hooked_ms:.0f}%",
                     "GFLOP/s": round(flops / (fwd + bwd) / 1e6) if flops else "-"})
    rest = hooked_ms - inside
    rows.append({"layer": "the rest", "what": "loss, optimizer, batching", "fwd ms": "", "bwd ms": round(rest, 2),
                 "share": f"{100 * rest / hooked_ms:.0f}%", "GFLOP/s": "-"})
    return rows, plain_ms, hooked_ms, mm


class ViewMaxPool(torch.autograd.Function):
    """2x2 max-pool of a channels-last map from four strided views; the gradient goes to each window's first max."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        v = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
        out = torch.maximum(torch.maximum(v[:, :, 0, :, 0], v[:, :, 0, :, 1]),
                            torch.maximum(v[:, :, 1, :, 0], v[:, :, 1, :, 1]))
        ctx.save_for_backward(x, out)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, out = ctx.saved_tensors
        n, c, h, w = x.shape
        v = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
        grad = grad.permute(0, 2, 3, 1)
        grad_in = torch.empty_like(v)
        taken = torch.zeros_like(out, dtype=torch.bool)
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # PyTorch's scan order: the first maximum wins a tie
            hit = (v[:, :, i, :, j] == out) & ~taken
            taken |= hit
            torch.mul(grad, hit, out=grad_in[:, :, i, :, j])
        return grad_in.reshape(n, h, w, c).permute(0, 3, 1, 2)


def median_ms(call: Callable[[], Any], repeats: int, warmup: int = 0) -> float:
    """The median milliseconds of ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def pool_alternatives(dtype: torch.dtype, repeats: int = 30) -> list[dict[str, Any]]:
    """Forward+backward milliseconds of fast's first pool, PyTorch's against the replacements."""
    g = torch.Generator().manual_seed(0)
    # Values on a coarse grid, so windows hold ties, as a conv's output over MNIST's flat background does.
    x = torch.randint(0, 8, (BATCH, 24, 24, 24), generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(BATCH, 24, 12, 12, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    ways = {"PyTorch max_pool2d": lambda t: F.max_pool2d(t, 2), "tensor views": ViewMaxPool.apply}
    if shutil.which("c++") or shutil.which("g++"):
        # its C++ build notes a missing CUDA runtime on a CPU-only machine: not this table's business
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        ways["torch.compile"] = torch.compile(lambda t: F.max_pool2d(t, 2))

    def run(f) -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.clone().requires_grad_()
        y = f(xi)
        y.backward(grad)
        return y, xi.grad

    ref_out, ref_grad = run(ways["PyTorch max_pool2d"])
    rows = []
    for name, f in ways.items():
        out, grad_in = run(f)  # also the warm-up (and compile)
        same = torch.equal(out, ref_out) and torch.equal(grad_in, ref_grad)
        rows.append({"max-pool": name, "ms (fwd+bwd)": round(median_ms(lambda: run(f), repeats), 2),
                     "same outputs and gradients": "yes" if same else "NO"})
    base = rows[0]["ms (fwd+bwd)"]
    for r in rows:
        r["time vs PyTorch"] = f"{r['ms (fwd+bwd)'] / base:.2f}x"
    return rows


def pool_by_channels(dtype: torch.dtype, repeats: int = 30) -> list[dict[str, Any]]:
    """PyTorch's 2x2 max-pool, forward and backward, on 256 x C x 24 x 24 channels-last maps: time per value."""
    rows = []
    for c in (16, 24, 32):
        x = torch.randn(BATCH, c, 24, 24).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(BATCH, c, 12, 12).to(dtype).contiguous(memory_format=torch.channels_last)
        ms = median_ms(lambda: F.max_pool2d(x, 2).backward(grad), repeats, warmup=3)  # the first calls allocate
        rows.append({"channels": c, "ms (fwd+bwd)": round(ms, 2), "ns per input value": round(1e6 * ms / x.numel(), 3)})
    return rows


class WindowMaxRelu(torch.autograd.Function):
    """ReLU of the max over dim 3 of (N, H, W, 4, C) (a pool window's four positions, of each channel), as (N, C,
    H, W) channels-last; the gradient goes to the first maximum where the result is above 0, as max_pool2d's and
    ReLU's do."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        out, idx = z.max(3)
        out = out.clamp_min_(0)
        ctx.save_for_backward(idx.to(torch.uint8), out)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        idx, out = ctx.saved_tensors
        grad = grad.permute(0, 2, 3, 1) * (out > 0)
        position = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4, 1)
        return (idx.unsqueeze(3) == position) * grad.unsqueeze(3)


def im2col_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(max_pool2d(conv2d(x, weight, bias), 2)) for one input channel and no padding, by one matmul over the
    5x5 patches (k x k) of each pool window's four positions."""
    n, k, c = x.shape[0], weight.shape[-1], weight.shape[0]
    patches = x[:, 0].unfold(1, k, 1).unfold(2, k, 1)  # (N, H', W', k, k) views
    h, w = patches.shape[1] // 2, patches.shape[2] // 2
    patches = patches[:, :2 * h, :2 * w].reshape(n, h, 2, w, 2, k * k).permute(0, 1, 3, 2, 4, 5)
    z = F.linear(patches.reshape(n, h, w, 4, k * k), weight.reshape(c, k * k), bias)  # (N, h, w, 4, C)
    return WindowMaxRelu.apply(z)


def polyphase_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, k, k) -> (4C, 4, (k+1)/2, (k+1)/2): position (a, b) of the pool window as the kernel placed at offset
    (a, b) of a (k+1) x (k+1) one, pixel-unshuffled like the image (odd k)."""
    groups = [F.pixel_unshuffle(F.pad(weight, (b, 1 - b, a, 1 - a)), 2) for a in (0, 1) for b in (0, 1)]
    return torch.cat(groups, 0)


def polyphase_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same block as one conv of the pixel-unshuffled image, the window's four positions as channel groups."""
    c = weight.shape[0]
    xs = F.pixel_unshuffle(x, 2).contiguous(memory_format=torch.channels_last)
    z = F.conv2d(xs, polyphase_weight(weight).contiguous(memory_format=torch.channels_last), bias.repeat(4))
    n, _, h, w = z.shape
    return WindowMaxRelu.apply(z.permute(0, 2, 3, 1).reshape(n, h, w, 4, c))


def layers_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The block as the models build it (conv_pool_stack: the pool before the ReLU)."""
    return F.relu(F.max_pool2d(F.conv2d(x, weight, bias), 2))


def first_block_alternatives(precision: str, repeats: int = 30) -> list[dict[str, Any]]:
    """Forward+backward milliseconds of fast's first block, the layers against im2col and polyphase."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(1, 24, 5).to(memory_format=torch.channels_last)  # PyTorch's initialization, as in the model
    x = torch.rand(BATCH, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(BATCH, 24, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    ways = {"PyTorch's layers": layers_block, "im2col": im2col_block, "polyphase": polyphase_block}

    def run(block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = block(x, conv.weight, conv.bias)
        y.backward(grad.to(y.dtype))
        return y.detach().float(), conv.weight.grad, conv.bias.grad

    ref = run(layers_block)
    rows = []
    for name, block in ways.items():
        got = run(block)  # also the warm-up
        # the sums run in another order (and in bf16, round differently): the largest difference, relative to
        # the largest value of the reference
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref))
        rows.append({"first block": name, "ms (fwd+bwd)": round(median_ms(lambda: run(block), repeats), 2),
                     "largest difference": f"{diff:.1e}"})
    base = rows[0]["ms (fwd+bwd)"]
    for r in rows:
        r["time vs the layers"] = f"{r['ms (fwd+bwd)'] / base:.2f}x"
    return rows


def main() -> None:
    p = benchmark_parser(__doc__, data_dir=False)
    p.add_argument("--models", nargs="*", default=["fast", "cnn"])
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="default: bf16 on a CPU with bf16 instructions (what train.precision auto picks), else fp32")
    args = parse_benchmark_args(p)
    precision = args.precision or ("bf16" if native_bf16() else "fp32")
    print(f"machine: {machine_description()}")
    print(f"batch {BATCH}, {precision}, each model in the layout it trains in on a CPU (cnn, fast: channels-last)")
    for name in args.models:
        rows, plain_ms, hooked_ms, mm = layer_times(name, precision)
        # roofline.py's measure: 3 x 2 x MACs per image, over the step without the hooks
        macs = count_macs(build_model(name, num_classes=10, in_channels=1, image_size=(28, 28)))
        gflop = 3 * 2 * macs * BATCH / 1e9
        rate = gflop / plain_ms * 1e3
        pool = next((r for r in rows if r["what"].startswith("max-pool")), None)
        without = ""
        if pool is not None:
            pool_ms = pool["fwd ms"] + pool["bwd ms"]
            without = (f"; without the first max-pool's {pool_ms:.2f} ms, "
                       f"{100 * gflop / (plain_ms - pool_ms) * 1e3 / mm:.0f}%")
        print(f"\n{name}: {plain_ms:.1f} ms per step ({hooked_ms:.1f} with the hooks, which the shares are of); "
              f"{gflop:.2f} GFLOP per step at {rate:.0f} GFLOP/s, {100 * rate / mm:.0f}% of the fp32 matmul rate "
              f"({mm:.0f} GFLOP/s, before each run){without}")
        print(format_table(rows))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    print(f"\nfast's first max-pool alone ({BATCH} x 24 x 24 x 24, channels-last, {precision}), median of 30:")
    print(format_table(pool_alternatives(dtype)))
    print(f"\nPyTorch's max-pool by channel count ({BATCH} x C x 24 x 24, channels-last, {precision}), median of 30:")
    print(format_table(pool_by_channels(dtype)))
    print(f"\nfast's first block (conv 1->24 5x5, max-pool 2x2, ReLU) on {BATCH} images, channels-last, {precision}, "
          "weights' and bias's gradients, median of 30:")
    print(format_table(first_block_alternatives(precision)))


if __name__ == "__main__":
    main()
