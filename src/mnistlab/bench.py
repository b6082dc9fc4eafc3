"""Speed measurements on this machine, through the product's own code paths.

``mnistlab bench`` prints three short tables; the scripts in ``benchmarks/``
print the long versions and keep their output as text. The training times and
rates are also given as a ratio against a reference measured in the same run,
next to it in time (on a shared machine absolute seconds move by 2x from one
minute to the next, ratios much less); the evaluation's seconds are as measured
(the speed issue's target for it is absolute):

- time to accuracy: the real :func:`~mnistlab.training.run.train` per seed;
  ``train_seconds`` counts the training steps only (no validation, no files;
  with ``train.compile``, no compiling: that is ``compile_seconds``);
- training rate ("roofline"): images per second of the real
  :class:`~mnistlab.training.fit.Trainer` on synthetic images, as achieved
  GFLOP/s = 3 x 2 x MACs/image x images/s (a backward pass costs about twice
  the forward: gradients for the inputs and for the weights), and that as a
  fraction of the machine's fp32 matrix-multiply rate (the faster of
  ``torch.mm`` and oneDNN's matmul, :func:`matmul_gflops`) measured just before it;
- evaluation: :func:`~mnistlab.training.evaluate.evaluate` on the test split.

>>> rate = matmul_gflops(n=256, repeats=2)       # doctest: +SKIP
>>> print(format_table([{"a": 1, "b": 2.5}]))
a    b
-  ---
1  2.5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Sequence

import torch

from .callbacks.base import Callback
from .config import Config, apply_overrides, parse_overrides
from .data.datasets import DataBundle, Split
from .errors import ConfigError
from .machine import cpu_name, native_bf16, native_fp16, usable_cores
from .models import build_model, model_options
from .models.summary import count_macs
from .training.evaluate import evaluate
from .training.fit import (
    Trainer,
    available_memory,
    check_training_memory,
    emulated_precision,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from .training.allocator import reuse_freed_memory
from .training.finetune import read_init_checkpoint
from .training.run import config_model, load_init, process_state_kept, settings_warnings, warnings_as

# Bytes of one synthetic training image in memory: 28 x 28 uint8 pixels and an int64 label.
_IMAGE_BYTES = 28 * 28 + 8


def public_recipe(data: DataBundle, seed: int = 0, *, reuse_memory: bool = True) -> dict[str, Any]:
    """The public recipe that target 1 of the speed issue measures against, as plain PyTorch.

    Convs of 24 5x5 and 32 3x3 kernels (ReLU, then 2x2 max-pool), linear 256,
    Adam lr 0.01 with betas 0.7/0.9, one-cycle (PyTorch's ``OneCycleLR``,
    momentum not cycled), batch 256, one epoch, the training images resident in
    memory as normalized float32, NCHW, PyTorch's default threads. This is
    deliberately *not* mnistlab's trainer: it is the outside reference its fast
    path is timed against, so it stays as the recipe was published.
    Returns the test accuracy and the seconds of the training steps.

    ``reuse_memory`` (pass the compared config's ``train.reuse_memory``) sets the process's malloc to keep freed
    memory first, as mnistlab's runs do: a setting of the whole process that stays once made, so the first
    seed's recipe ran under other settings than the later ones, which came after a mnistlab run (up to 1.3x
    slower, benchmarks/allocator.txt). The comparison is of the training code, under one allocator.
    """
    if reuse_memory:
        reuse_freed_memory()
    with process_state_kept():  # it seeds the global RNG (its weights); an API caller keeps its own stream
        return _public_recipe(data, seed)


def _public_recipe(data: DataBundle, seed: int) -> dict[str, Any]:
    from torch import nn
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 24, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(24, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 256), nn.ReLU(), nn.Linear(256, 10),
    )
    mean, std = data.mean[0], data.std[0]
    x = (data.train.images.cpu().float() / 255 - mean) / std
    y = data.train.labels.cpu()
    steps = -(-len(y) // 256)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.7, 0.9))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps, cycle_momentum=False)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    for i in range(steps):
        idx = order[i * 256 : (i + 1) * 256]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        xt = (data.test.images.cpu().float() / 255 - mean) / std
        correct = sum(int((model(xt[i : i + 2000]).argmax(1) == data.test.labels.cpu()[i : i + 2000]).sum())
                      for i in range(0, len(xt), 2000))
    return {"test_accuracy": correct / len(xt), "train_seconds": seconds, "precision": "fp32"}  # as published


def benchmark_parser(doc: str | None, data_dir: bool = True) -> argparse.ArgumentParser:
    """The argument parser every script in ``benchmarks/`` starts from: ``--data-dir`` and ``--threads``.

    Parse with :func:`parse_benchmark_args`, which applies ``--threads``.
    """
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if data_dir:
        p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--threads", type=int, help="torch threads for every run (default: PyTorch's); 1 on a shared "
                   "machine, where 2 threads on 2 busy cores can stall for seconds in OpenMP barriers")
    return p


def parse_benchmark_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def machine_description(device: torch.device | None = None) -> str:
    """One line: :func:`~mnistlab.machine.cpu_name`, whether it has bf16 instructions (which ``train.precision``
    auto uses) or fp16 ones, cores, torch version, threads (and the GPU, if used)."""
    native = [f"{p} instructions" for p, has in (("bf16", native_bf16()), ("fp16", native_fp16())) if has]
    # under taskset, a container's cpuset or a SLURM allocation the numbers below come from fewer cores than
    # the machine has: "64 cores" alone said the measurement had them all
    usable = usable_cores()
    total = os.cpu_count() or usable
    cores = f"{total} cores" + (f" ({usable} usable by this process)" if usable != total else "")
    text = (f"{cpu_name()}{' with ' * bool(native)}{' and '.join(native)}, {cores}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)}")
    if hasattr(os, "getloadavg"):  # Unix's: on Windows bench stopped here with an AttributeError
        try:
            text += f", load average {os.getloadavg()[0]:.1f} at start"
        except OSError:  # "load average unobtainable"
            pass
    if device is not None and device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    elif device is not None and device.type == "mps":  # (torch names no Apple GPU: the chip is the CPU's)
        text += "; GPU: the chip's own, through MPS"
    return text


def _sync(device: torch.device) -> None:
    """Wait for the device's queued kernels: a GPU's product returns before it is computed."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # without it, matmul_rates(device="mps") timed the launch, not the product
        torch.mps.synchronize()


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """The machine's matrix-multiply rate (fp32 unless ``dtype``): the best of PyTorch's library paths, in GFLOP/s.

    Each path's rate is the median of ``repeats`` n x n products. On a CPU there
    are two: ``torch.mm`` (the BLAS PyTorch was built with, MKL for the wheels)
    and oneDNN's matmul, which the convolutions use. They differ by machine: on
    an AMD EPYC, MKL's ``torch.mm`` ran at 0.45x oneDNN's rate (it does not take
    its AVX-512 kernels there), so a model's convolutions would have shown as
    more than 100% of "the machine's" rate; on an Intel Xeon both ran alike.
    """
    return max(matmul_rates(n, repeats, device, dtype=dtype).values())


def matmul_paths(a: torch.Tensor, b: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Ways to compute ``a @ b`` (matrices of one dtype) on their device.

    oneDNN's result is in its own layout (``.to_dense()`` gives a plain tensor).
    """
    paths: dict[str, Callable[[], torch.Tensor]] = {"mm": lambda: torch.mm(a, b)}
    if a.device.type == "cpu" and torch.backends.mkldnn.is_available():
        # aten's oneDNN linear on oneDNN-layout tensors computes x @ w.T; the layouts are converted here, untimed.
        a_dnn, bt_dnn = a.to_mkldnn(), b.t().contiguous().to_mkldnn()
        if a.dtype != torch.float32:
            try:  # a bf16 one needs AVX-512 (or AVX-NE-CONVERT): on an AVX2 CPU it raises, and torch.mm emulates
                torch.ops.aten.mkldnn_linear(a_dnn, bt_dnn)
            except RuntimeError:
                return paths
        paths["onednn"] = lambda: torch.ops.aten.mkldnn_linear(a_dnn, bt_dnn)
    return paths


def matmul_rates(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu",
                 threads: int | None = None, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """GFLOP/s of an n x n matrix product per library path: "mm" (``torch.mm``) and, on a CPU, "onednn".

    ``dtype`` is the matrices' (fp32 by default; bf16 gives the rate bf16 autocast's layers can reach).

    ``threads`` runs the products on that many torch threads (the setting is put
    back afterwards): the rate on one thread against all of them says whether
    the cores have vector units of their own (see :func:`thread_scaling`).
    """
    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return matmul_rates(n, repeats, device, dtype=dtype)
        finally:
            torch.set_num_threads(before)
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)  # not the global stream: an API caller's stays where it was
    a, b = (torch.randn(n, n, generator=g, dtype=dtype).to(device) for _ in range(2))
    rates = {}
    for name, product in matmul_paths(a, b).items():
        product()  # first call: allocation and kernel choice
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            product()
            _sync(device)
            times.append(time.perf_counter() - t0)
        rates[name] = 2 * n**3 / statistics.median(times) / 1e9
    return rates


def thread_scaling(every: float | None = None, n: int = 2048, repeats: int = 5) -> str:
    """One line: the CPU's fp32 matmul rate on one thread and on all of torch's threads, and their ratio.

    ``every`` is the all-threads rate when the caller has just measured it
    (``max(matmul_rates().values())``), so that both lines show one number.
    Near the thread count, each thread has vector units of its own; near 1,
    the threads share them (virtual CPUs that are one physical core's
    hyperthreads), and more threads or processes will not train faster.
    """
    threads = torch.get_num_threads()
    one = max(matmul_rates(n, repeats, threads=1).values())
    every = max(matmul_rates(n, repeats).values()) if every is None else every
    return (f"fp32 matmul on 1 thread: {one:.0f} GFLOP/s; on {threads} threads: {every:.0f} GFLOP/s "
            f"({every / one:.2f}x)")


def check_synthetic_memory(images: int) -> None:
    """A ConfigError when ``images`` synthetic images (:func:`synthetic_data`, what a training-rate run keeps in
    memory: batch size x steps) surely do not fit in this machine's free memory (unknown: nothing is checked)."""
    need, free = images * _IMAGE_BYTES, available_memory()
    if free is not None and need > free:
        raise ConfigError(f"the training-rate runs keep batch size x steps = {images:,} synthetic images in memory, "
                          f"{need / 2**30:.1f} GiB, but this machine has {free / 2**30:.1f} GiB free; lower --steps "
                          "or train.batch_size")


def synthetic_data(n: int, *, val: int = 2, device: str | torch.device = "cpu", seed: int = 0) -> DataBundle:
    """Random uint8 MNIST-shaped images (speed does not depend on their content)."""
    g = torch.Generator().manual_seed(seed)

    def split(k: int) -> Split:
        return Split(torch.randint(0, 256, (k, 1, 28, 28), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (k,), generator=g)).to(device)

    return DataBundle(train=split(n), val=split(val), test=split(val), dataset="synthetic",
                      classes=[str(i) for i in range(10)], num_classes=10, in_channels=1, image_size=(28, 28),
                      mean=(0.13,), std=(0.31,))


def training_rate(
    model_name: str,
    *,
    batch_size: int = 256,
    steps: int = 20,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    config: Config | None = None,
    callbacks: Sequence[Callback] = (),
) -> float:
    """Images per second of training steps of the real Trainer (second epoch; the first warms up).

    ``config`` (default: the defaults) gives the other settings, e.g. a preset's augmentation and EMA;
    ``callbacks`` look inside the run (benchmarks/step_profile.py times its layers). The caller's random
    stream and thread count are put back afterwards.
    """
    _at_least_one(batch_size=batch_size, steps=steps)
    check_synthetic_memory(batch_size * steps)
    with process_state_kept():
        return _training_rate(model_name, batch_size, steps, overrides, device, config, callbacks)


def _rate_trainer(model_name: str, batch_size: int, images: int, overrides: Sequence[str], device: str,
                  config: Config | None, callbacks: Sequence[Callback] = ()) -> Trainer:
    """The Trainer of a training-rate run, on ``images`` synthetic images."""
    # Coming after them, these overrides replaced the run's own settings: roofline(overrides=["train.batch_size=64"])
    # trained at 64 under its batch_size's row, and "train.epochs=1" timed the warm-up epoch.
    own = [key for key in parse_overrides(list(overrides)) if key in ("model.name", "train.batch_size", "train.epochs")]
    if own:
        raise ConfigError(f"overrides: {own[0]} is set by the training-rate run itself (the model and batch size are "
                          "its arguments; it trains two epochs and times the second)")
    cfg = apply_overrides(config or Config(), [
        f"model.name={model_name}", f"train.batch_size={batch_size}", "train.epochs=2", "train.progress=false",
        "schedule.name=constant", f"train.device={device}", *overrides,
    ])
    dev = resolve_device(cfg.train.device)
    data = synthetic_data(images, device=dev)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, in_channels=1, image_size=(28, 28), mean=data.mean,
                        std=data.std, **cfg.model.options())
    return Trainer(model, data, cfg, callbacks=callbacks, device=dev)


def _training_rate(model_name: str, batch_size: int, steps: int, overrides: Sequence[str], device: str,
                   config: Config | None, callbacks: Sequence[Callback]) -> float:
    result = _rate_trainer(model_name, batch_size, batch_size * steps, overrides, device, config, callbacks).fit()
    return batch_size * steps / result.history[-1]["seconds"]


def roofline(
    models: Iterable[str] = ("cnn", "fast"),
    *,
    batch_size: dict[str, int] | int = 256,
    steps: dict[str, int] | int = 20,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    precision: str = "fp32",
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Per model: training images/s, MACs/image, achieved GFLOP/s and its fraction of the fp32 matmul rate.

    The matmul rate is measured right before each model (on a loaded machine it
    changes with the load), and the fraction uses that neighbour. ``precision``
    is ``train.precision`` ("fp32" or "bf16"): in bf16 each row also has the bf16
    matmul rate and the fraction of that, the limit bf16's layers work against.
    With ``rounds`` above 1 each model is measured that many times, each time
    with its own matmul rate just before; the row gives the medians (the
    fraction: the median of the rounds' fractions) and the fractions' range.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f'roofline precision must be "fp32" or "bf16", got {precision!r}')
    _at_least_one(rounds=rounds)
    device = resolve_device(device, "roofline(device)").type  # "auto" was torch.device's RuntimeError
    rows = []
    for name in models:
        b = batch_size[name] if isinstance(batch_size, dict) else batch_size
        s = steps[name] if isinstance(steps, dict) else steps
        cfg = apply_overrides(Config(), [f"model.name={name}", *overrides])
        # as training_rate builds it: with the defaults, overrides=["model.width=0.5"] reported the full width's
        # MACs, and a compute fraction 4x what the half-width model reached
        model = build_model(name, num_classes=10, in_channels=1, image_size=(28, 28), **cfg.model.options())
        macs = count_macs(model)
        layout = "NHWC" if use_channels_last(cfg.train.channels_last, model, torch.device(device)) else "NCHW"
        measured = []  # (images/s, fp32 matmul rate, bf16 matmul rate or None) per round
        for _ in range(rounds):
            mm = matmul_gflops(device=device)
            # pinned, not auto: auto may pick bf16 on one machine and fp32 on another
            ips = training_rate(name, batch_size=b, steps=s, overrides=[*overrides, f"train.precision={precision}"],
                                device=device)
            mm16 = matmul_gflops(device=device, dtype=torch.bfloat16) if precision == "bf16" else None
            measured.append((ips, mm, mm16))
        gflops = [3 * 2 * macs * ips / 1e9 for ips, _, _ in measured]
        fractions = [g / mm for g, (_, mm, _) in zip(gflops, measured)]
        ips, mm = statistics.median(m[0] for m in measured), statistics.median(m[1] for m in measured)
        row = {"model": name, "layout": layout, "batch": b, "precision": precision, "images/s": round(ips),
               "MMACs/image": round(macs / 1e6, 2), "train GFLOP/s": round(statistics.median(gflops), 1),
               "matmul GFLOP/s": round(mm, 1), "fraction": f"{100 * statistics.median(fractions):.0f}%"}
        if rounds > 1:
            row["fraction range"] = f"{100 * min(fractions):.0f}-{100 * max(fractions):.0f}%"
        if precision == "bf16":
            mm16 = statistics.median(m[2] for m in measured)
            row.update({"bf16 matmul GFLOP/s": round(mm16, 1),
                        "of bf16": f"{100 * statistics.median(g / m[2] for g, m in zip(gflops, measured)):.0f}%"})
        rows.append(row)
    return rows


def eval_seconds(model: torch.nn.Module, split: Split, batch_size: int = 500, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of :func:`evaluate` on ``split`` (after one warm-up), and its accuracy."""
    ev = evaluate(model, split, batch_size)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(model, split, batch_size)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), ev.accuracy


def time_to_accuracy(overrides: Sequence[str], seeds: Iterable[int], *, config: Config | None = None) -> list[dict[str, Any]]:
    """Run the real ``train`` once per seed; test accuracy and training seconds of each run."""
    from .training.run import train

    rows = []
    for seed in seeds:
        cfg = apply_overrides(config or Config(), [*overrides, f"train.seed={seed}", "train.progress=false",
                                                   "tensorboard.enabled=false"])
        with tempfile.TemporaryDirectory() as tmp:
            s = train(cfg, out=f"{tmp}/run", quiet=True, report=False).summary  # the folder goes: no plots
        rows.append({"seed": seed, "test_accuracy": s["test_accuracy"], "train_seconds": s["train_seconds"],
                     "compile_seconds": s.get("compile_seconds", 0.0),  # train.compile: outside train_seconds
                     "val_accuracy": s["best_val_accuracy"], "precision": s["precision"]})
    return rows


def variant_runs(config: Config, variants: Sequence[tuple[str, Sequence[str]]], seeds: int,
                 overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """:func:`time_to_accuracy` of each ``(label, overrides)`` variant of ``config`` for seeds 0 to ``seeds - 1``,
    the variants interleaved seed by seed (so that the machine's slow stretches fall on all of them); one row
    per run: seed, variant, best validation accuracy in % and training seconds. Prints a line per seed."""
    rows = []
    for seed in range(seeds):
        for label, opts in variants:
            run = time_to_accuracy([*opts, *overrides], [seed], config=config)[0]
            rows.append({"seed": seed, "variant": label, "val acc %": round(100 * run["val_accuracy"], 2),
                         "train s": round(run["train_seconds"], 2)})
        print(f"seed {seed} done", flush=True)
    return rows


def _at_least_one(**counts: int | None) -> None:
    """A ValueError for a count below 1 (None: not given)."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows of equal keys as an aligned text table (numbers right-aligned)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    numeric = [all(isinstance(r[k], (int, float)) for r in rows) for k in keys]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(keys), line(["-" * w for w in widths]), *map(line, cells)])


def run_bench(config: Config, *, seeds: int = 1, models: Sequence[str] = ("cnn", "fast"), steps: int = 20,
              rounds: int = 1, train_limit: int | None = None, out=print) -> None:
    """What ``mnistlab bench`` prints: time to accuracy (``config`` vs the public recipe), training rate, evaluation.

    ``config`` is the recipe to time (e.g. configs/fast.toml) with its data settings; its ``train.seed`` is
    the first of ``seeds`` seeds in a row. ``train_limit`` shortens the time-to-accuracy runs (a smoke test,
    not a measurement); ``rounds`` measurements of each model's training rate give the median fraction (see
    :func:`roofline`). Everything that can be checked without running is checked before the first run.
    The caller's random stream and thread count are put back afterwards. Warnings go to stderr as
    ``mnistlab bench: warning: ...``, each once.
    """
    _at_least_one(seeds=seeds, steps=steps, rounds=rounds, train_limit=train_limit)
    with process_state_kept(), warnings_as("bench") as warn:  # train() warns once per seed: the user needs once
        _run_bench(config, seeds, models, steps, rounds, train_limit, out, warn)


def _check_before_running(config: Config, models: Sequence[str], seeds: int, steps: int, rate_overrides: Sequence[str],
                          device: torch.device, warn: Callable[[str], None]) -> torch.nn.Module:
    """What would fail or warn only after minutes of runs: the config's model, the last seed, the memory and the
    trainer's checks of the training-rate runs (``rate_overrides``: their settings), the config's warnings (an
    emulated precision: slow, not wrong). Returns the config's model, whose batch's memory is checked once the
    data is read (a batch holds no more than the split)."""
    model_options(config.model.name)  # an unknown model fails now, not after the data and the public recipe
    model = build_model(config.model.name, **config.model.options())  # options it cannot take (vgg, no layout)
    last = config.train.seed + seeds - 1
    try:  # seed 2**32 - 1 and --seeds 2 ran the first seed's runs, then refused the second's seed
        apply_overrides(config, {"train.seed": last})
    except ConfigError as e:
        raise ConfigError(f"{seeds} seeds from train.seed {config.train.seed} go up to {last}: {e}") from None
    check_synthetic_memory(config.train.batch_size * steps)
    shape = SimpleNamespace(in_channels=1, image_size=(28, 28))  # every dataset's (and the synthetic images')
    for name in models:
        check_training_memory(build_model(name), shape, config.train.batch_size)
        # The checks of its Trainer (batch norm on a batch of one image, say), which came after the
        # time-to-accuracy runs. Two images are enough: the trainer checks a batch of no more than the split.
        # reuse_memory off: it would set the allocator of the whole process before the public recipe and the
        # config's runs, which may have it off.
        try:
            _rate_trainer(name, config.train.batch_size, 2, [*rate_overrides, "train.reuse_memory=false"],
                          device.type, None)
        except ConfigError as e:
            raise ConfigError(f"the training-rate run of {name}: {e}") from None
    for text in [*settings_warnings(config),
                 *filter(None, [emulated_precision(resolve_precision(config.train.precision, device), device)])]:
        warn(text)
    return model


def _check_training(config: Config, data: DataBundle, device: torch.device, init: tuple[Any, Any] | None) -> None:
    """What ``train`` refuses only once the data is read: the config's model built for it with
    ``finetune.init_from``'s weights (``init``, read before the data), and the trainer's checks (batch norm on
    batches of one image, class_weights of another count, every parameter frozen, sync_batchnorm on a CPU, ...).
    They came after the first public recipe's run."""
    model = config_model(config, data)
    if init is not None:
        load_init(model, config, data, init)
    Trainer(model, data, config, device=device)


def _run_bench(config: Config, seeds: int, models: Sequence[str], steps: int, rounds: int, train_limit: int | None,
               out, warn: Callable[[str], None]) -> None:
    if config.data.test_limit is not None:  # the accuracy to reach is the whole test set's, the public recipe's too
        warn(f"data.test_limit = {config.data.test_limit} is not used by bench: time to accuracy is measured on "
             "the whole test set")
        config = apply_overrides(config, ["data.test_limit=none"])
    device = resolve_device(config.train.device)
    setting = config.train.channels_last
    cl = [f"train.channels_last={'none' if setting is None else str(setting).lower()}"]  # the training-rate runs'
    if config.train.threads:
        cl.append(f"train.threads={config.train.threads}")
    model = _check_before_running(config, models, seeds, steps, [*cl, "train.precision=fp32"], device, warn)
    init = None if config.finetune.init_from is None else read_init_checkpoint(config.finetune.init_from)
    if config.train.threads:  # for the public recipe and the roofline too, not only inside `train`
        torch.set_num_threads(config.train.threads)
    out(f"machine: {machine_description(device)}")
    if train_limit:
        config = apply_overrides(config, [f"data.train_limit={train_limit}"])
    from .data import load_data

    data = load_data(config.data)  # for the public recipe, which runs on the CPU as published
    _check_training(config, data, device, init)
    # the config's batch, as its runs' trainer checks it (no more than the split, or a part of it), but now
    batch = min(config.train.batch_size, len(data.train), config.train.micro_batch_size or len(data.train))
    check_training_memory(model, data, batch)
    rows, seconds = [], {"public recipe": [], "this config": []}
    first = config.train.seed
    for seed in range(first, first + seeds):  # interleaved: public recipe, this config, public recipe, ...
        ref = public_recipe(data, seed, reuse_memory=config.train.reuse_memory)
        mine = time_to_accuracy([], [seed], config=config)[0]
        for name, r in (("public recipe", ref), ("this config", mine)):
            seconds[name].append(r["train_seconds"])
            rows.append({"recipe": name, "seed": seed, "precision": r["precision"],
                         "test acc %": round(100 * r["test_accuracy"], 2), "train s": round(r["train_seconds"], 2)})
            if config.train.compile:
                rows[-1]["compile s"] = round(r["compile_seconds"], 1) if "compile_seconds" in r else "-"
    # of the seconds as measured, not as rounded for the table (a short run's 0.01 s would be the whole ratio)
    ratio = statistics.median(seconds["this config"]) / statistics.median(seconds["public recipe"])
    out(f"\ntime to accuracy on {config.data.dataset}'s test set (seconds of the training steps only)")
    out(format_table(rows))
    out(f"training time of this config / public recipe: {ratio:.2f}x (medians)")

    out("\nfp32 training rate against the fp32 matmul rate (GFLOP/s = 3 x 2 x MACs x images/s; the matmul rate is "
        "measured again before each model)")
    if device.type == "cpu" and torch.get_num_threads() > 1:
        out(thread_scaling())
    out(format_table(roofline(models, batch_size=config.train.batch_size, steps=steps, overrides=cl,
                              device=device.type, rounds=rounds)))

    out(f"\nevaluation of {config.data.dataset}'s test split (cnn model, untrained weights: speed only)")
    data = load_data(config.data, device=device)
    model = build_model("cnn", num_classes=10, in_channels=1, image_size=(28, 28)).to(device)
    if use_channels_last(setting, model, device):
        model = model.to(memory_format=torch.channels_last)
    secs, _ = eval_seconds(model, data.test, config.train.eval_batch_size, repeats=1 if train_limit else 3)
    out(format_table([{"model": "cnn", "images": len(data.test), "seconds": round(secs, 3),
                       "images/s": round(len(data.test) / secs)}]))
