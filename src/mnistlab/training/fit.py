"""The training loop.

:class:`Trainer` runs it and is also the handle callbacks talk to (see
``callbacks/base.py``). ``Trainer.fit`` reads top to bottom: for each epoch,
for each batch: learning rate, forward, backward, step; then validation,
callbacks, checkpoint, stop check.

Resume is exact on CPU because nothing in the loop depends on hidden state:
the batch order is a function of (seed, epoch), the learning rate a function
of the step, and the checkpoint holds the weights, optimizer, callback states,
the global RNG state (dropout) and, after an interrupt, the position inside
the epoch.

Under torchrun the same loop runs in every process (see distributed.py): each
takes its share of every global batch, DistributedDataParallel averages the
gradients, one all-reduce per step sums the batch metrics and any stop signal,
rank 0 validates and its metrics and callback decisions are broadcast, and only
rank 0 (the one given a run folder) writes files.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import operator
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..callbacks.base import Callback, CallbackList, MonitorMixin
from ..config import FLOAT32_MAX, Config, TrainConfig, config_from_dict, config_to_dict, stored_before_own_defaults
from ..data.augment import augment
from ..data.batching import epoch_permutation, iterate_batches, num_batches
from ..data.datasets import DataBundle, Split
from ..errors import CheckpointError, ConfigError, MnistlabError, deterministic_refusal, raise_signalled
from ..machine import native_bf16, native_fp16
from ..models.base import has_forward_hooks, too_large
from ..models.checkpointing import keep_running_stats
from ..models.summary import output_bytes
from . import distributed
from .allocator import reuse_freed_memory
from .checkpoint import CheckpointWriteError, load_weights, save_checkpoint, weights_digest, weights_only_refusal
from .ema import WeightAverage
from .display import Display
from .evaluate import eval_mode, evaluate, predict_logits
from .mixing import mix_batch
from .finetune import freeze, hold_frozen_batch_norm, released_by, trainable_line
from .optim import build_optimizer, fill_missing_state, lay_out_state_as_params
from .schedules import lr_at, warmup_steps


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_amount(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


INT32_MAX = 2**31 - 1


def _grad_scaler_ok(state: Any) -> bool:
    """Whether ``state`` is a torch.amp.GradScaler state_dict that can train: a scale that float32 holds as a
    normal number of at least 1 (below 1 the run stops, see ``_optimizer_step``), factors GradScaler's own
    constructor would take (growth above 1, backoff in (0, 1)), and counts that fit its int32 counter."""
    if not isinstance(state, dict):
        return False
    scale, growth, backoff = (state.get(k) for k in ("scale", "growth_factor", "backoff_factor"))
    interval, tracker = state.get("growth_interval"), state.get("_growth_tracker")
    return (all(_is_amount(v) for v in (scale, growth, backoff)) and 1.0 <= scale <= FLOAT32_MAX
            and 1.0 < growth <= FLOAT32_MAX and 0.0 < backoff < 1.0
            and _is_count(interval) and 1 <= interval <= INT32_MAX and _is_count(tracker) and tracker <= INT32_MAX)


def _check_progress(payload: dict[str, Any]) -> None:
    """The fields of a resumable checkpoint that say where training was, checked for type and range."""
    problems = [f"{key} = {payload.get(key, 0)!r}" for key in ("epoch", "step", "batch", "steps_per_epoch",
                                                                 "skipped_steps")
                if not _is_count(payload.get(key, 0))]
    problems += [f"{key} = {payload.get(key, 0.0)!r}" for key in ("lr_scale", "train_seconds", "partial_seconds",
                                                                           "compile_seconds")
                 if not _is_amount(payload.get(key, 0.0))]
    scaler = payload.get("grad_scaler")
    if scaler is not None and not _grad_scaler_ok(scaler):
        problems.append(f"grad_scaler = {scaler!r}")
    if _is_count(payload.get("skipped_steps", 0)) and _is_count(payload.get("step", 0)) and (
            payload.get("skipped_steps", 0) > payload.get("step", 0)):
        problems.append(f"skipped_steps = {payload['skipped_steps']!r} of {payload['step']!r} steps")
    partial = payload.get("partial", torch.zeros(3, dtype=torch.float64))
    if not (isinstance(partial, torch.Tensor) and partial.shape == (3,) and partial.is_floating_point()):
        problems.append(f"partial = {partial!r}")
    history = payload["history"]
    if not (isinstance(history, list) and all(isinstance(h, dict) and _is_count(h.get("epoch")) for h in history)):
        problems.append("history (not a list of epoch rows)")
    rng = payload["rng"]
    size = torch.get_rng_state().shape
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
            and rng["torch"].shape == size and isinstance(rng.get("cuda"), (list, type(None)))
            # each GPU's state, as torch.cuda.get_rng_state gives it (a wrong one raised in set_rng_state_all)
            and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.dim() == 1
                    for s in rng.get("cuda") or [])
            and (rng.get("mps") is None or isinstance(rng["mps"], torch.Tensor) and rng["mps"].dtype == torch.uint8)):
        problems.append("rng (not the random state torch saves)")
    if problems:
        raise CheckpointError(f"the checkpoint's training state is damaged: {'; '.join(problems)}; it was not written "
                              "by `mnistlab train`, or was changed since")


def _check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's optimizer tensors (Adam's moments, SGD's momentum) have its shape: the fused and
    foreach kernels index them without checking, and a wrong one crashed the process (SIGSEGV). The step
    count, and NAdam's product of momentum coefficients, are one number each."""
    for i, p in enumerate(q for group in optimizer.param_groups for q in group["params"]):
        for key, value in optimizer.state.get(p, {}).items():
            if key == "step":
                ok = _is_amount(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)
            elif key == "mu_product":
                ok = isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()
            else:
                ok = not isinstance(value, torch.Tensor) or (value.shape == p.shape and value.is_floating_point())
            if not ok:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise CheckpointError(f"the optimizer state in the checkpoint does not fit the model: {key} of "
                                      f"parameter {i} is {shape}, the parameter {tuple(p.shape)}")


VAL_SIZE_NEEDED = "data.val_size must be at least 1 to train: the best epoch, early stopping and checkpoints are chosen on it"

# Entries of a checkpoint payload that only resuming needs; ema.ckpt (a model to use) leaves them out.
_TRAINING_STATE = ("optimizer", "rng", "callbacks", "partial", "partial_seconds", "ema", "ema_sha256", "ema_best",
                   "ema_monitor", "grad_scaler", "skipped_steps")

# What restore() reads besides the weights; read_checkpoint has checked the rest.
_RESUME_KEYS = ("optimizer", "lr_scale", "epoch", "step", "history", "train_seconds", "rng")


def use_channels_last(setting: bool | None, model: nn.Module, device: torch.device) -> bool:
    """Resolve ``train.channels_last``: an explicit true/false wins; none (auto) means NHWC
    on CUDA, and on a CPU only for models that declare it faster there, and never for a model
    with a conv that PyTorch's CPU backward crashes on in NHWC (see ``nhwc_crash_layer``)."""
    crash = nhwc_crash_layer(model) if device.type == "cpu" else None
    if setting is True and crash is not None:
        raise ConfigError(
            f"train.channels_last = true: on the CPU, PyTorch {torch.__version__}'s backward pass of layer {crash} "
            "(a 1x1 conv with a stride above 1 and 2 to 15 input channels) in channels-last memory aborts the "
            "process; leave train.channels_last unset, or widen the model"
        )
    if setting is not None:
        return setting
    return device.type == "cuda" or (crash is None and bool(getattr(model, "channels_last_on_cpu", False)))


def check_training_memory(model: nn.Module, data, batch_size: int) -> None:
    """A ConfigError when a training batch surely does not fit in this machine's free memory.

    The estimate: every layer's output for one image (measured by one forward pass), which autograd
    keeps for the backward pass, times the batch; plus the weights, their gradients and two optimizer
    moments. It leans high (ResNet-50 at batch 128: 4.3 GiB estimated, 3.2 GiB measured), so only a
    batch that cannot fit is refused: a model that builds can need hundreds of GB per batch
    (channels=[100000]: 80 GB at batch 256), and the allocator's traceback or the kernel's OOM killer
    came mid-epoch. Where the free memory is not known (not Linux), nothing is checked.
    """
    available = available_memory()
    if available is None:
        return
    with eval_mode(model), torch.no_grad():  # batch norm statistics must not move
        outputs = output_bytes(model, torch.zeros(1, data.in_channels, *data.image_size), leaves_only=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need = sum(outputs) * batch_size + 4 * weights
    if need > available:
        raise ConfigError(
            f"a training batch of {batch_size} needs about {need / 2**30:.1f} GiB (the layers' outputs, "
            f"{_mib(sum(outputs))} an image, and the weights with their gradients and optimizer "
            f"moments), but this machine has {available / 2**30:.1f} GiB free; lower train.batch_size, model.width "
            "or the channel counts"
        )


def check_model_outputs(model: nn.Module, data, device: torch.device) -> None:
    """A ConfigError, before training, unless ``model`` maps two of the data's images to a row of
    ``data.num_classes`` logits each. A model with another number of outputs failed in the first step with
    PyTorch's "Target 5 is out of bounds" (fewer), or trained and then broke the confusion matrix of a
    validation that predicted a class the data does not have (more); one that cannot take the images at all
    failed there with a message about matrix shapes. A model with forward hooks is left alone (the hooks
    would see a pass the caller did not ask for)."""
    if has_forward_hooks(model) or len(data.val) == 0:
        return
    shape = f"{data.in_channels} x {data.image_size[0]} x {data.image_size[1]}"
    try:
        with eval_mode(model), torch.no_grad():  # no dropout draws, no batch-norm statistics moved
            out = model(data.val.images[:2].to(device).float().div(255))
    except (RuntimeError, ValueError, TypeError) as e:
        if too_large(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"the model cannot take the data's images ({data.dataset}: {shape}, floats in [0, 1]): "
                          f"{type(e).__name__}: {first}") from e
    rows = min(2, len(data.val))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rows, data.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model must output one row of {data.num_classes} logits per image ({data.dataset} has "
                          f"{data.num_classes} classes): for {rows} images it gave {got}; build it with "
                          f"num_classes={data.num_classes}")


def _mib(size: int) -> str:
    """Bytes in MiB, or KiB below 0.1 MiB (a small model's image took "0.0 MiB").

    >>> _mib(94_000_000), _mib(20_000)
    ('89.6 MiB', '19.5 KiB')
    """
    return f"{size / 2**20:.1f} MiB" if size >= 0.1 * 2**20 else f"{size / 2**10:.1f} KiB"


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def nhwc_crash_layer(model: nn.Module) -> str | None:
    """The first conv whose CPU backward in channels-last kills the process (PyTorch 2.14: "double free
    or corruption", or a segfault), or None: a 1x1 conv with a stride above 1 and 2 to 15 input channels,
    as a narrow ResNet's projection shortcut (resnet18 at width 0.125: 8 -> 16). Which counts crash
    depends on the CPU: 2 to 7 on an AVX2 one (one thread); 2 to 15 on an AVX-512 one, in fp32 and bf16,
    at odd batch sizes (a last partial batch) and two threads. 1 or 16 and more input channels, stride 1,
    a wider kernel, or NCHW memory ran (benchmarks/nhwc_crash.py scans it; its output is kept beside it)."""
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
                and 2 <= m.in_channels < 16):
            return name
    return None


# Settings that do not change what is trained, only where files are, how fast it goes, what is written or shown,
# and how the test is done: a run that stopped early and is resumed with new values of these alone stays stopped.
_NOT_TRAINING_SECTIONS = {"checkpoint", "tensorboard", "tta"}
_NOT_TRAINING = {
    "data": {"dir", "download"},
    "train": {"progress", "report", "threads", "eval_batch_size", "reuse_memory", "device", "compile", "channels_last"},
    # which weights end the run, not how it trains: turned on at the resume of a stopped run, the run trained one
    # more epoch, stopped again, and then had no best weights to restore (they are kept only while it is on)
    "early_stopping": {"restore_best_weights"},
}

# What places a batch in its epoch: a run interrupted inside an epoch resumes there only if these are unchanged.
_EPOCH_LAYOUT = (("train", "batch_size"), ("train", "seed"), ("data", "dataset"), ("data", "val_size"),
                 ("data", "split_seed"), ("data", "train_limit"))


def _training_settings(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A config dict without the settings that do not change what is trained (``_NOT_TRAINING...``)."""
    return {s: {k: v for k, v in keys.items() if k not in _NOT_TRAINING.get(s, ())}
            for s, keys in config.items() if s not in _NOT_TRAINING_SECTIONS}


def _rng_state() -> dict[str, Any]:
    """The global RNG state (dropout, augmentation) of this process, as checkpoints store it."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Apple's GPU has a generator of its own, which augmentation and dropout draw from on "mps": without it
        # a run resumed on a Mac trained on other random draws than the one not interrupted
        **({"mps": torch.mps.get_rng_state()} if _mps_available() else {}),
    }


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _set_rng_state(rng: dict[str, Any] | None) -> None:
    """Put back a random state :func:`_rng_state` took (None: leave this process's as it is)."""
    if rng is None:
        return
    torch.set_rng_state(rng["torch"])
    # .get: _check_progress lets a state without GPU states through (None or absent, as "mps" below)
    if rng.get("cuda") and torch.cuda.is_available():
        # One state per GPU the writing process saw: a run from a machine with more GPUs (or resumed
        # under CUDA_VISIBLE_DEVICES) raised IndexError for a GPU not here. Those here get theirs back.
        torch.cuda.set_rng_state_all(rng["cuda"][:torch.cuda.device_count()])
    if rng.get("mps") is not None and _mps_available():  # (none in a checkpoint written without MPS)
        torch.mps.set_rng_state(rng["mps"])


def _hide_cuda_home_note(record: logging.LogRecord) -> bool:
    """A logging filter: inductor's first compile imports torch.utils.cpp_extension, which warns "No CUDA runtime
    is found, using CUDA_HOME=..." on a machine without a GPU; a CPU run compiles for the CPU and has no use for it."""
    return not record.getMessage().startswith("No CUDA runtime is found")


class TrainingInterrupted(Exception):
    """Raised after a SIGINT/SIGTERM once the resumable checkpoint is written.

    ``train()`` gives it the run folder and, as its message, the advice to resume it
    (``advice``), which ``mnistlab train`` prints; a caller with its own advice, like a
    sweep, prints that instead.
    """

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.checkpoint = checkpoint
        self.run_dir: Path | None = None
        self.advice = ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM

    def __reduce__(self):
        # Pickled as cls(*args), it failed to unpickle ("missing 'checkpoint'"), so a run in a
        # multiprocessing or joblib worker that was interrupted came back as a broken pool instead.
        return type(self), (self.signum, self.checkpoint), {**self.__dict__, "args": self.args}


@dataclass
class FitResult:
    """What :func:`~mnistlab.fit` (and a run's ``fit``) gives back: the trained model, in eval mode, one metrics
    dict per epoch, why and by what it stopped, the epochs and steps done and the seconds of training."""

    model: nn.Module
    history: list[dict[str, float]]  # one metrics dict per epoch
    stop_reason: str
    stopped_by: str  # max_epochs | max_steps | early_stopping | time_limit | non_finite_loss | callback
    epochs: int  # epochs completed
    steps: int
    train_seconds: float  # time spent in training steps (no validation, no checkpoint writes)
    compile_seconds: float = 0.0  # train.compile: time spent compiling the step before training (Trainer.compile_ahead)
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` picks bf16 autocast on a GPU or CPU that computes in bf16, else fp32.

    On such a CPU (AVX512-BF16 or AMX on x86) bf16 trained every zoo model in
    0.55-0.85x the time of fp32 at the same accuracy (``benchmarks/bf16.py``);
    without them bf16 took 9-13x the time of fp32. fp16 is never picked: it
    needs a loss scale, and it is asked for by name (a GPU before Ampere).
    """
    if name == "fp16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"train.precision = fp16 needs CUDA or the CPU (its loss scaling is not built for "
                          f"{device.type} here); use bf16 or fp32")
    if name != "auto":
        return name
    if (device.type == "cuda" and cuda_native_bf16(device)) or (device.type == "cpu" and native_bf16()):
        return "bf16"
    return "fp32"


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16: NVIDIA's since Ampere (compute capability 8.0). Older ones (a T4, V100)
    emulate it, which ``torch.cuda.is_bf16_supported()`` counts as support by default; ROCm's own answer there."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device) >= (8, 0)


def emulated_precision(precision: str, device: torch.device) -> str | None:
    """A warning where ``precision`` (as resolved) is bf16 or fp16 on hardware that does not compute in it, else None.

    auto never picks such a one; asked for by name it trains, far slower: bf16 took 9-13x and fp16 7-19x the
    time of fp32 on CPUs without their instructions (benchmarks/bf16.py).
    """
    if device.type == "cpu":
        slow = (precision == "bf16" and not native_bf16()) or (precision == "fp16" and not native_fp16())
        what, times = {"bf16": ("AVX512-BF16 or AMX-BF16", "9-13x"), "fp16": ("AVX512-FP16 or AMX-FP16", "7-19x")}.get(
            precision, ("", ""))
        return (f"train.precision = {precision}: this CPU has no {precision} arithmetic ({what}), so PyTorch emulates "
                f"it, in many times the time of fp32 ({times} where measured); fp32 is faster here") if slow else None
    if device.type == "cuda" and precision == "bf16" and not cuda_native_bf16(device):
        return ("train.precision = bf16: this GPU (before Ampere) emulates bf16, slower than fp32; fp16 uses its "
                "tensor cores")
    return None


# cuBLAS reuses workspace across streams unless told how much each may have; without this, PyTorch's
# deterministic mode refuses every CUDA matrix product. Read when the first cuBLAS handle is made.
CUBLAS_WORKSPACE = ":4096:8"

# deterministic_mode is process-wide: runs that overlap (in threads) share one setting, made by the first to
# enter and put back by the last to leave.
_deterministic_lock = threading.Lock()
_deterministic_runs = 0
_deterministic_before: Callable[[], None] | None = None


def _tf32_switches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, value without TF32) for fp32 matrix products and cuDNN convolutions. PyTorch 2.9 on
    has per-backend ``fp32_precision`` settings; once those are used, touching the legacy ``allow_tf32`` flags
    raises, so the legacy ones are used only where the new ones do not exist."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(getattr(b.cudnn, "conv", None), "fp32_precision"):
        return [(b.cuda.matmul, "fp32_precision", "ieee"), (b.cudnn.conv, "fp32_precision", "ieee")]
    return [(b.cuda.matmul, "allow_tf32", False), (b.cudnn, "allow_tf32", False)]


def _enter_deterministic() -> Callable[[], None]:
    """Switch the process to deterministic computing; returns what puts it back as it was."""
    algorithms = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    tf32 = [(obj, name, getattr(obj, name)) for obj, name, _ in _tf32_switches()]
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if env is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    for obj, name, value in _tf32_switches():
        setattr(obj, name, value)

    def leave() -> None:
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        for obj, name, value in tf32:
            setattr(obj, name, value)
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    return leave


@contextlib.contextmanager
def deterministic_mode(on: bool):
    """In the block, with ``on``: only deterministic algorithms (an op without one raises), cuDNN's deterministic
    convolutions chosen without benchmarking, and no TF32 for fp32 convolutions and matrix products. It is
    put back as it was when the last block still in it leaves (blocks nest, also across threads), so that it
    does not outlive the run in the process."""
    global _deterministic_runs, _deterministic_before
    if not on:
        yield
        return
    with _deterministic_lock:
        if _deterministic_runs == 0:
            _deterministic_before = _enter_deterministic()
        _deterministic_runs += 1
    try:
        yield
    finally:
        with _deterministic_lock:
            _deterministic_runs -= 1
            if _deterministic_runs == 0 and _deterministic_before is not None:
                _deterministic_before()
                _deterministic_before = None


@contextlib.contextmanager
def deterministic_errors(on: bool):
    """With train.deterministic: PyTorch's refusal of an op that has no deterministic version (also where
    torch.compile wrapped it), as a config error that names the op and the way out."""
    try:
        yield
    except Exception as e:
        refusal = deterministic_refusal(e) if on and not isinstance(e, MnistlabError) else None
        if refusal is None:
            raise
        raise ConfigError(f"train.deterministic = true: {refusal} (PyTorch {torch.__version__}); set "
                          "train.deterministic = false to train with it") from e


def data_on(data: DataBundle, device: torch.device) -> DataBundle:
    """``data`` with each split on ``device`` (the same bundle where they are there already; MNIST's 70,000
    images are 55 MB as uint8)."""
    def there(split: Split) -> bool:
        have = split.images.device
        return have.type == device.type and (device.index is None or have.index == device.index)

    if all(there(s) for s in (data.train, data.val, data.test)):
        return data
    return replace(data, train=data.train.to(device), val=data.val.to(device), test=data.test.to(device))


@contextlib.contextmanager
def device_memory_errors(train: TrainConfig):
    """A GPU that runs out of memory in the block (torch.OutOfMemoryError) as a ConfigError naming the batch and
    the way out. On the CPU ``check_training_memory`` refuses such a batch before training; on a GPU nothing
    did, and the allocator's traceback came mid-epoch (or, under train.compile, as "could not compile")."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        # the allocator's message is one long line: "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ..."
        first = ". ".join((str(e).strip().splitlines() or ["out of memory"])[0].split(". ")[:2]).rstrip(".")
        micro = "" if train.micro_batch_size is None else f" in parts of {train.micro_batch_size}"
        raise ConfigError(f"the device ran out of memory training on batches of {train.batch_size}{micro} ({first}); "
                          "lower train.batch_size, set train.micro_batch_size to train each batch in smaller parts "
                          "(the same updates), or lower model.width") from e


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """fp16's dynamic loss scale, PyTorch's: from 2**16, halved on an overflow, doubled after 2000 clean steps."""
    return torch.amp.GradScaler(device.type)


def resolve_device(name: str | torch.device, setting: str = "train.device") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; ``setting`` is what the errors call the choice. A
    torch.device is taken as it is, where this machine has it."""
    if isinstance(name, torch.device):
        return _checked_device(name, setting)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "mps" and not _mps_available():
        raise ConfigError(f"{setting} = 'mps' but MPS is not available; use 'auto' or 'cpu'")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # "gpu": torch's "Expected one of cpu, cuda, ipu, xpu, ..."
        raise ConfigError(f"{setting} = {name!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or "
                          "'mps'") from None
    return _checked_device(device, setting)


def _checked_device(device: torch.device, setting: str) -> torch.device:
    """``device``, or a ConfigError where it is a CUDA device this machine has not ("cuda:0" without CUDA,
    "cuda:3" with one GPU: torch failed at the first tensor moved, after the data was read)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"{setting} = {str(device)!r} but this machine has {count} CUDA device(s); use "
                              "'auto' or 'cpu'")
    return device


def stopping_signals() -> list[int]:
    """The signals that stop a training run: SIGINT, SIGTERM and, in one process, SIGHUP (the terminal closing;
    under torchrun the launcher passes it on as a SIGTERM, the signal the ranks agree on). One ignored when the
    run started stays ignored: `nohup mnistlab train` (SIGHUP), a shell's background job (SIGINT). Handled,
    closing the terminal stopped the run nohup was for."""
    hup = [signal.SIGHUP] if hasattr(signal, "SIGHUP") and not distributed.launched_by_torchrun() else []
    return [s for s in (signal.SIGINT, signal.SIGTERM, *hup) if signal.getsignal(s) is not signal.SIG_IGN]


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Inside the block each of :func:`stopping_signals` raises where the program is, as Ctrl-C does (SIGTERM and
    SIGHUP as :class:`~mnistlab.errors.Signalled`): for the work before and after the trainer's steps (loading
    the data, the test, the report), which its guard, set for the steps, does not cover. Only the main thread
    may set handlers; elsewhere the block changes nothing."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, raise_signalled) for s in stopping_signals() if s != signal.SIGINT}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class _SignalGuard:
    """First SIGINT/SIGTERM/SIGHUP asks the loop to stop at the next step; a second one ends the run at once.

    A second Ctrl-C raises ``KeyboardInterrupt``, Python's own answer to it, and a second SIGTERM
    :class:`~mnistlab.errors.Signalled`: the run unwinds through its ``finally`` blocks (the run lock,
    temporary files) and a notebook's kernel lives on; the CLI exits 130 / 143 with the resume line. A
    second SIGHUP (the terminal is gone: nothing to print to), and any second signal in a torchrun worker
    (whose peers may hold it in a collective while it unwinds), ends the process (``os._exit``). Either is
    safe: every file but TensorBoard's appended event files is written atomically (temp file, then rename).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for s in stopping_signals():
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        if not distributed.launched_by_torchrun():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            if signum == signal.SIGTERM:  # it ended the process without a word (the README's resume line)
                raise_signalled(signum, frame)
        os._exit(128 + signum)

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class _EmaChoice(MonitorMixin):
    """The monitor and mode that choose ema.ckpt, with the callbacks' own improvement rule."""

    def __init__(self, monitor: str, mode: str) -> None:
        self._init_monitor(monitor, mode)


def place_in_run(epoch: int, batch: int, steps: int | None = None) -> str:
    """A training state's place, in the words of the resume line, a resume's refusals and the divergence warning:
    "after epoch 2", or "inside epoch 3, after batch 6 of 15" for one written inside an epoch (Ctrl-C,
    checkpoint.last_every_n_steps), ``epoch`` epochs done.

    >>> place_in_run(2, 0), place_in_run(2, 6, 15), place_in_run(2, 6)
    ('after epoch 2', 'inside epoch 3, after batch 6 of 15', 'inside epoch 3, after batch 6')
    """
    if not batch:
        return f"after epoch {epoch}"
    return f"inside epoch {epoch + 1}, after batch {batch}" + (f" of {steps}" if steps else "")


def _plain_metrics(metrics: dict[str, Any]) -> None:
    """Make the epoch's metrics, which callbacks may have added to, plain data that checkpoints can hold (they
    load with weights_only=True): NumPy numbers and one-value tensors become Python numbers; anything else that
    cannot be held is a ConfigError naming the key, at once, not a run whose every checkpoint is unreadable."""
    for key, value in metrics.items():
        if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            metrics[key] = value.item()
    refusal = weights_only_refusal(metrics)
    if refusal is not None:
        raise ConfigError(f"a callback put into the epoch's metrics what checkpoints cannot hold ({refusal}): keep "
                          "them to numbers and strings")


def class_weights(setting: tuple[float, ...] | str | None, data) -> torch.Tensor | None:
    """``train.class_weights`` for ``data``: one float32 weight per class, or None (unweighted).

    "balanced" is scikit-learn's and Keras' recipe: n / (classes x the class's count) over the training split,
    so each class weighs as much in an epoch as any other.

    >>> from types import SimpleNamespace as S
    >>> class_weights("balanced", S(train=S(labels=torch.tensor([0, 0, 0, 1])), num_classes=2, classes=["a", "b"]))
    tensor([0.6667, 2.0000])
    """
    if setting is None:
        return None
    if setting == "balanced":
        counts = torch.bincount(data.train.labels.cpu(), minlength=data.num_classes)
        missing = [str(data.classes[c]) for c in range(data.num_classes) if counts[c] == 0]
        if missing:
            raise ConfigError(f'train.class_weights = "balanced" weighs each class by its training images, and the '
                              f"training split has none of {', '.join(missing)}; give the weights as a list")
        return (counts.sum() / (data.num_classes * counts.double())).float()
    if len(setting) != data.num_classes:
        raise ConfigError(f"train.class_weights has {len(setting)} weight{'s' * (len(setting) != 1)}, but the data "
                          f"has {data.num_classes} classes ({', '.join(map(str, data.classes))}): give one per class, "
                          "in that order")
    return torch.tensor(setting, dtype=torch.float32)


def planned_steps(train: TrainConfig, steps_per_epoch: int, done: int = 0, start: int = 0) -> int:
    """The steps a run of ``train.epochs`` epochs of ``steps_per_epoch`` means to take: the span of its
    learning-rate schedule, cut to ``train.max_steps``.

    A resumed run has trained ``done`` epochs in ``start`` steps: fewer than ``done * steps_per_epoch`` where
    ``train.max_steps`` ended an epoch early, and the schedule spans the steps the run takes, not those it skipped.

    >>> planned_steps(TrainConfig(epochs=3), 100), planned_steps(TrainConfig(epochs=3, max_steps=250), 100)
    (300, 250)
    >>> planned_steps(TrainConfig(epochs=4), 100, done=3, start=250)  # epoch 3 ended at max_steps = 250
    350
    """
    total = start + (train.epochs - done) * steps_per_epoch
    return total if train.max_steps is None else min(total, train.max_steps)


def check_resume(payload: dict[str, Any], cfg: Config) -> Config:
    """Refuse a checkpoint ``cfg`` cannot continue from, by what the checkpoint and the config say alone (not
    a training state, another model or dataset, fewer epochs than trained); the stored config otherwise.

    A run checks this before it loads its data: another ``data.dataset`` would first be loaded, or downloaded.
    """
    if payload.get("resumable") is False:
        raise CheckpointError(
            "the checkpoint holds a model to use (best.ckpt, ema.ckpt, a top-k or a periodic file), not the "
            "training state a run continues from: resume the run folder (its last.ckpt), or start a new run from "
            "these weights with --init-from (finetune.init_from)"
        )
    missing = [k for k in _RESUME_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"the checkpoint cannot be resumed from: it holds a model without its training state (it lacks "
            f"{', '.join(missing)}; another tool's file?): resume the run folder (its last.ckpt), or start a new "
            "run from these weights with --init-from (finetune.init_from)"
        )
    if payload["model_name"] != cfg.model.name:
        raise CheckpointError(
            f"the checkpoint holds a {payload['model_name']!r} model, but the config asks for {cfg.model.name!r}"
        )
    # the settings the run was trained under, as the command line read them (stored_config)
    stored = config_from_dict(stored_before_own_defaults(payload["config"]))
    # Options that change the network without changing a tensor's shape (lenet5's padding, stride, crop,
    # bn_after_pool) would load the weights into another network without an error; dropout only trains.
    changed = [f"model.{key} was {old}, now {new}" for key, old in stored.model.options().items()
               if key != "dropout" and old != (new := cfg.model.options()[key])]
    if changed:
        raise ConfigError(f"{'; '.join(changed)}: the run trained another network; resume with the run's [model] "
                          "settings (`mnistlab train --resume` keeps them unless a flag or --set changes them), or "
                          "start a new run from its weights with --init-from (finetune.init_from)")
    _check_progress(payload)  # what fit() reads later: a bad value must fail now, before files are written
    done, batch = int(payload["epoch"]), int(payload.get("batch", 0))
    if cfg.train.epochs < done + (batch > 0):
        trained = f"{done} epoch{'s' * (done != 1)}"
        if batch:
            trained += f" and {batch} batch{'es' * (batch != 1)} of epoch {done + 1}"
        raise ConfigError(f"train.epochs is {cfg.train.epochs}, but the run has trained {trained}: "
                          f"resume with --epochs {done + (batch > 0)} or more")
    steps, max_steps = int(payload["step"]), cfg.train.max_steps
    if max_steps is not None and max_steps < steps:  # == : nothing left, it ends as it stands
        raise ConfigError(f"train.max_steps is {max_steps}, but the run has taken {steps} steps: resume with "
                          f"--max-steps {steps} or more")
    if stored.data.dataset != cfg.data.dataset:
        # The datasets of the family are alike in size, so no count in Trainer.restore would catch it: the run
        # would go on with the first's input normalization, metrics and best.ckpt, compared with the new's.
        raise ConfigError(
            f"data.dataset was {stored.data.dataset}, now {cfg.data.dataset}: a run trains on one dataset; "
            "start a new run from this one's weights with --init-from (finetune.init_from)"
        )
    # The resumed run loads last.ckpt, never init_from: train(cfg, resume=...) with another one trained on from
    # the run's weights and wrote the new start point into config.toml, which then named weights never used (the
    # CLI refuses the change itself).
    given, was = (os.path.abspath(os.path.expanduser(v)) if isinstance(v, str) else v
                  for v in (cfg.finetune.init_from, stored.finetune.init_from))
    if given != was:
        raise ConfigError(f"finetune.init_from was {stored.finetune.init_from or 'unset (new weights)'}, now "
                          f"{cfg.finetune.init_from or 'unset'}: a resumed run continues from its own last.ckpt, "
                          "not from another start point; resume with the run's finetune.init_from, or start a new "
                          "run from those weights")
    return stored


class Trainer:
    """Trains ``model`` on ``data`` as ``cfg`` says; implements ``TrainerHandle`` for callbacks."""

    def __init__(
        self,
        model: nn.Module,
        data,
        cfg: Config,
        *,
        callbacks: Iterable[Callback] = (),
        run_dir: str | Path | None = None,
        display: Display | None = None,
        device: torch.device | None = None,
    ) -> None:
        if len(data.val) == 0:
            raise ConfigError(VAL_SIZE_NEEDED)
        self.cfg = cfg
        self.device = device or resolve_device(cfg.train.device)
        # The data goes where the model trains, as train() loads it: the Python API's load_data(cfg.data) keeps
        # it on the CPU while train.device "auto" puts the model on a GPU, where CPU batches met CUDA weights.
        self.data = data_on(data, self.device)
        # Under torchrun: this process's share of every batch (train.batch_size is the global batch).
        self._world, self._rank = distributed.world_size(), distributed.rank()
        self._part = (self._rank, self._world) if self._world > 1 else None
        distributed.check_processes(self._world, self.device, cfg.train.batch_size)
        distributed.check_sync_batchnorm(cfg.train.sync_batchnorm, self.device)
        if cfg.train.sync_batchnorm and self._world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self._model = model.to(self.device)
        if cfg.train.reuse_memory and self.device.type == "cpu":
            reuse_freed_memory()
        if cfg.train.grad_checkpoint:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ConfigError(f"train.grad_checkpoint: {type(model).__name__} has no set_grad_checkpointing "
                                  "(zoo models have it; see models/checkpointing.py)")
            model.set_grad_checkpointing(True)
        # Frozen parameters stay out of the optimizer until finetune.unfreeze_at adds them as a new group.
        self._frozen = freeze(model, cfg.finetune.freeze)
        if not any(p.requires_grad for p in model.parameters()):
            until = f" before epoch {cfg.finetune.unfreeze_at}" if cfg.finetune.unfreeze_at else ""
            raise ConfigError(f"finetune.freeze {list(cfg.finetune.freeze)} holds every parameter of the model: nothing "
                              f"would train{until}; freeze fewer (`mnistlab models --details` lists the layers)")
        self._batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if min(cfg.train.batch_size, len(data.train)) < 2 * self._world and self._batch_norm:
            if cfg.train.batch_size < 2 * self._world:
                raise ConfigError(f"train.batch_size {cfg.train.batch_size} leaves batch norm one image per process "
                                  f"to normalize, which it cannot in training; use a batch of {2 * self._world} or "
                                  "more, or a model without batch_norm")
            raise ConfigError(f"the training split has {len(data.train)} image(s), which leaves batch norm one per "
                              f"process to normalize, which it cannot in training; it needs {2 * self._world} or "
                              "more (raise data.train_limit or lower data.val_size), or a model without batch_norm")
        check_model_outputs(self._model, data, self.device)
        if self.device.type == "cpu":
            # A batch holds no more than the split: a batch size above it is a full-batch run, not a larger one;
            # in parts (train.micro_batch_size), a part's activations are what is kept at once.
            check_training_memory(model, data, min(cfg.train.batch_size, len(data.train),
                                                   cfg.train.micro_batch_size or len(data.train)))
        self._channels_last = use_channels_last(cfg.train.channels_last, model, self.device)
        if self._channels_last:
            self._model = self._model.to(memory_format=torch.channels_last)
        self._wrap()
        # bf16 or fp16 autocast for the forward pass and loss; the weights and optimizer stay fp32.
        self.precision = resolve_precision(cfg.train.precision, self.device)
        weights = class_weights(cfg.train.class_weights, data)  # before any training: a wrong count fails now
        self._class_weights = weights.to(self.device) if weights is not None else None
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # fp16's narrow range: gradients below 6e-8 would flush to 0, so the loss is multiplied by a scale that
        # is halved whenever a step's gradients overflow (that step is skipped) and doubled after 2000 good ones.
        self.scaler = grad_scaler(self.device) if self.precision == "fp16" else None
        self.skipped_steps = 0  # fp16 steps the loss scale skipped (their gradients overflowed)
        self.callbacks = CallbackList(callbacks)
        self.optimizer = build_optimizer(self._model.parameters(), cfg.optimizer, self.device)
        self.ema = WeightAverage(self._model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
        # ema.ckpt is chosen like best.ckpt: on the average's own value of checkpoint.monitor (ema_val_loss for
        # val_loss or ema_val_loss itself), in the same mode; for a monitor the average has no value of (a training
        # metric), on its validation accuracy.
        chosen_on = cfg.checkpoint.monitor.removeprefix("ema_")
        monitor = chosen_on if chosen_on in ("val_loss", "val_accuracy") else "val_accuracy"
        mode = cfg.checkpoint.mode if monitor == chosen_on else "auto"
        self._ema_choice = _EmaChoice(f"ema_{monitor}", mode)
        self._best_ema: float | None = None  # best value of that monitor so far: ema.ckpt holds that epoch's average
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self.display = display or Display(quiet=True)
        # A remainder of under 2 images per process joins the epoch's last full batch: batch norm in training
        # mode cannot normalize one row (VGG's on 1x1 maps raised at the end of the first epoch).
        self._min_last = 2 * self._world
        self.steps_per_epoch = num_batches(len(data.train), cfg.train.batch_size, self._min_last)
        self._plan_from = (0, 0)  # (epochs, steps) trained before this run or its resumed part (see plan())
        self._replan()
        self._epoch = 0  # epochs completed
        self._step = 0  # optimizer steps taken
        self.lr_scale = 1.0  # set by callbacks through set_lr (ReduceLROnPlateau)
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.compile_seconds = 0.0  # summed over the resumed parts of the run, like train_seconds
        self._compiled = False  # compile_ahead has run for the current trainable parameters
        self.stop_reason: str | None = None
        self.stopped_by: str | None = None
        self.restored_epoch: int | None = None  # the epoch whose weights restore_weights made the final ones
        self._resume: dict[str, Any] | None = None
        self._resume_rng: dict[str, Any] | None = None  # the random state restore() set (None: this process's own)
        self._signals = _SignalGuard()
        self._rng_ranks: list[dict[str, Any]] = []  # every rank's RNG state at the last epoch end (multi-process)
        self._cut_short = False  # the last epoch was ended by train.max_steps before its last batch
        # how the config's [model] differs from the model trained (a checkpoint would rebuild that), or None: fit()
        # sets it where it has not checked up front
        self.model_differs: Callable[[], str | None] = lambda: None

    def _wrap(self) -> None:
        """Build ``self._forward``, the module of the training forward pass.

        DDP (under torchrun) averages the gradients across processes in backward;
        torch.compile wraps whatever is outermost. Weights, checkpoints and
        evaluation always go through the plain ``self._model``.
        """
        forward: nn.Module = self._model
        if self._world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            forward = DistributedDataParallel(forward, device_ids=ids)
        self._forward = torch.compile(forward) if self.cfg.train.compile else forward

    # ---- the loop -------------------------------------------------------------

    def fit(self) -> FitResult:
        on = self.cfg.train.deterministic
        # Gradients on, as train() has them, for fit() called in the caller's `with torch.no_grad():` (or
        # inference_mode), where the first step failed with "element 0 of tensors does not require grad"; the
        # caller's mode (the thread's) comes back with the block.
        with (deterministic_mode(on), deterministic_errors(on), device_memory_errors(self.cfg.train),
              torch.inference_mode(False), torch.enable_grad()):
            return self._fit()  # (the callbacks' begin and end in both too)

    def _fit(self) -> FitResult:
        cb = self.callbacks
        # From before the callbacks begin: TensorBoard's graph and images take most of a second there, after
        # config.toml and the "training" line, and a signal in it took Python's default, leaving a folder with
        # neither a last.ckpt to resume nor room for a new run. Caught, it stops the run after its first step.
        with self._signals:
            cb.on_train_begin(self)
            if self._resume is not None:
                cb.load_state_dict(self._resume.get("callbacks", {}))
                # Again, after the callbacks' start: one that draws there (a random sample of images to show) took
                # the numbers of the first resumed steps' dropout, augmentation and mixup, and the run diverged
                # from the uninterrupted one, whose callbacks drew before its first step.
                _set_rng_state(self._resume_rng)
            self.compile_ahead()  # a no-op if train.run did it already
            for epoch in range(self._epoch + 1, self.cfg.train.epochs + 1):
                if self.stop_reason is not None:  # resumed from the last.ckpt of a run that had stopped early
                    break
                inside = self._resume is not None and bool(self._resume.get("batch"))  # resumed in mid-epoch
                if self._out_of_steps() and not inside:  # resumed with train.max_steps at or below the steps taken
                    self._steps_done()
                    break
                if epoch == self.cfg.finetune.unfreeze_at and self._unfreeze():
                    self.display.log(f"epoch {epoch}: unfroze {', '.join(self.cfg.finetune.freeze)}; "
                                     f"{trainable_line(self._model)}")
                    self.compile_ahead()  # trainable parameters changed (and DDP was rebuilt): a new graph
                cb.on_epoch_begin(epoch, self)
                train_metrics, seconds = self._train_epoch(epoch)
                if train_metrics is None:  # non-finite loss: stop_reason is set
                    break
                # Rank 0 validates and sends its numbers: the weights are the same on every rank, but without
                # SyncBatchNorm the batch-norm buffers are each rank's own, and the callbacks must agree.
                val_metrics = distributed.broadcast_object(self._validate() if distributed.is_main() else None)
                if not math.isfinite(val_metrics["val_loss"]):  # the epoch's last steps diverged: keep last.ckpt
                    self.stop_reason = (
                        f"non-finite validation loss ({val_metrics['val_loss']}) at epoch {epoch}, after step "
                        f"{self._step}; the weights of this epoch were not saved"
                    )
                    self.stopped_by = "non_finite_loss"
                    break
                if self._world > 1:
                    self._rng_ranks = distributed.gather_objects(_rng_state())
                cb.on_validation_end(epoch, val_metrics, self)
                self._epoch = epoch
                metrics = {"epoch": epoch, **train_metrics, **val_metrics, "lr": self._last_lr(), "seconds": seconds}
                self.history.append(metrics)
                self.display.epoch_row(metrics)
                cb.on_epoch_end(epoch, metrics, self)
                _plain_metrics(metrics)  # what callbacks added (Keras' logs["f1"] = f1_score(...)) goes into last.ckpt
                if self._out_of_steps() and (epoch < self.cfg.train.epochs or self._cut_short):
                    self._steps_done()  # (a last epoch that ran to its end ended at max epochs)
                # The callbacks saw the same metrics on every rank, so they decided alike; rank 0's decision is
                # made the rule anyway, so that no rank can train an epoch the others skip (a deadlock).
                self.stop_reason, self.stopped_by, self.lr_scale = distributed.broadcast_object(
                    (self.stop_reason, self.stopped_by, self.lr_scale)
                )
                self._save_ema(epoch, metrics)
                self._save_last()
                # A signal that came during validation or the saves is acted on now, not lost: the batch loop
                # only looks after each step, and after the last epoch there is none.
                signum = self._signal_received()
                if signum is not None:
                    self._interrupted(epoch, 0, None, signum)
                if self.stop_reason is not None:
                    break
        self._pending_signal()
        if self.stop_reason is None:
            self.stop_reason, self.stopped_by = f"max epochs reached ({self.cfg.train.epochs})", "max_epochs"
        last = dict(self.history[-1]) if self.history else {}
        cb.on_train_end({**last, "stop_reason": self.stop_reason}, self)
        return FitResult(
            model=self._model,
            history=self.history,
            stop_reason=self.stop_reason,
            stopped_by=self.stopped_by or "callback",
            epochs=self._epoch,
            steps=self._step,
            train_seconds=self.train_seconds,
            compile_seconds=self.compile_seconds,
        )

    def _validate(self) -> dict[str, float]:
        eps = self.cfg.train.label_smoothing  # val_loss is the training loss on the validation images
        epoch = f"epoch {self._epoch + 1}/{self._planned_epochs}"
        val = evaluate(self._model, self.data.val, self.cfg.train.eval_batch_size, self.data.num_classes,
                       label_smoothing=eps, progress=self.display.evaluation_progress(f"{epoch} validating"))
        metrics = {"val_loss": val.loss, "val_accuracy": val.accuracy, "val_error": 1.0 - val.accuracy}
        if self.ema is not None:
            ema = evaluate(self.ema.module, self.data.val, self.cfg.train.eval_batch_size, self.data.num_classes,
                           label_smoothing=eps,
                           progress=self.display.evaluation_progress(f"{epoch} validating the average"))
            metrics.update(ema_val_loss=ema.loss, ema_val_accuracy=ema.accuracy)
        return metrics

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, batch_rows: int,
              mix: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        """The cross-entropy mean of the global batch, or under DDP this rank's part of it; with ``[mixup]``
        (``mix``: the partner labels and the images' own share) the cross-entropy against the blended labels.

        DDP averages the gradients over the ranks, so each rank's loss is the sum over its
        rows times world / rows-in-the-global-batch: the average is then the gradient of the
        global batch mean, as one process computes it, even when the last batch splits
        unevenly or leaves a rank no rows (where a mean would be NaN). With ``train.class_weights`` each
        image's loss is first multiplied by its class's weight (Keras' class_weight).
        """
        if mix is not None:  # cross-entropy is linear in the target: the blend of the two labels' losses
            partner, share = mix
            return share * self._loss(logits, y, batch_rows) + (1 - share) * self._loss(logits, partner, batch_rows)
        smoothing = self.cfg.train.label_smoothing
        if self._class_weights is not None:  # each image's loss times its class's weight, summed as below
            losses = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
            return (losses * self._class_weights[y]).sum() * (self._world / batch_rows)
        if self._world == 1 and len(y) == batch_rows:  # the whole batch: its mean
            return F.cross_entropy(logits, y, label_smoothing=smoothing)
        # A rank's share, or a part of the batch (train.micro_batch_size): its rows' part of the batch's mean.
        return F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="sum") * (self._world / batch_rows)

    def _parts(self, x: torch.Tensor, y: torch.Tensor, mix: tuple[torch.Tensor, float] | None
               ) -> list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, float] | None]]:
        """The batch as ``train.micro_batch_size`` asks: in parts of at most that many rows, as even as can
        be (one part without it), each with its rows' mixup partners. With batch norm no part has fewer than
        2 rows, which it cannot normalize."""
        micro = self.cfg.train.micro_batch_size
        if micro is None or len(y) <= micro:
            return [(x, y, mix)]
        parts = -(-len(y) // micro)
        if self._batch_norm:
            parts = max(1, min(parts, len(y) // 2))
        mixes = [None] * parts if mix is None else [(p, mix[1]) for p in mix[0].tensor_split(parts)]
        return list(zip(x.tensor_split(parts), y.tensor_split(parts), mixes))

    def _train_epoch(self, epoch: int) -> tuple[dict[str, float] | None, float]:
        cfg, model, opt = self.cfg.train, self._model, self.optimizer
        self._train_mode()
        start, sums = 0, torch.zeros(3, dtype=torch.float64)  # loss sum, correct, seen
        before = 0.0  # training seconds of this epoch spent before an interruption: the epoch's time counts them
        if self._resume is not None and self._resume.get("batch", 0) and self._resume["epoch"] == epoch - 1:
            start, sums = self._resume["batch"], self._resume["partial"].clone()
            before = float(self._resume.get("partial_seconds", 0.0))  # 0 in checkpoints older than the key
        self._resume = None
        self._cut_short = False  # ended by train.max_steps before its last batch
        order = epoch_permutation(len(self.data.train), cfg.seed, epoch, self.device)
        batches = iterate_batches(self.data.train, cfg.batch_size, order=order, start=start, part=self._part,
                                  min_last=self._min_last)
        shown = self.steps_per_epoch  # the batches the progress bar counts to: fewer where train.max_steps ends it
        if cfg.max_steps is not None:
            shown = max(min(shown, start + cfg.max_steps - self._step), 1)
        t0 = time.perf_counter()
        for batch, (x, y) in enumerate(batches, start):
            if self._out_of_steps():  # train.max_steps: the epoch ends here, and is validated as any other
                self._cut_short = True
                break
            self.callbacks.on_batch_begin(self._step, self)
            lr = self._scheduled_lr(self._step) * self.lr_scale
            if lr > FLOAT32_MAX:  # SGD's foreach step raised converting it; an infinite rate is stopped below
                lr = math.inf
            for group in opt.param_groups:
                group["lr"] = lr
            x, mix = self._prepare(x, y)
            batch_rows = self._batch_rows(batch)
            opt.zero_grad(set_to_none=True)  # only now, so that the last batch's gradients stayed readable
            step_sums = self._backward_batch(x, y, batch_rows, mix)
            # This batch's loss sum, correct and seen, summed over the ranks: every rank sees the same numbers
            # and makes the same non-finite decision.
            step_sums = distributed.all_reduce_sum(step_sums)
            loss_value = float(step_sums[0] / step_sums[2])
            where = f"at epoch {epoch}, step {self._step + 1} (batch {batch + 1} of {self.steps_per_epoch})"
            if not math.isfinite(loss_value):
                return self._diverged(t0, f"non-finite loss ({loss_value}) {where}; the weights were not updated "
                                          "with it")
            if not self._optimizer_step():
                return self._diverged(t0, f"non-finite gradients {where}: in fp16 the loss scale fell below 1 "
                                          f"({self.scaler.get_scale():g}), so the gradients overflow even unscaled; "
                                          "the weights were not updated with them")
            if self.ema is not None:
                self.ema.update(model)
            self._step += 1
            sums += step_sums
            self.callbacks.on_batch_end(self._step, {"loss": loss_value, "lr": lr}, self)
            self.display.progress(epoch, self._planned_epochs, batch + 1, shown, sums[0] / sums[2],
                                  sums[1] / sums[2], float(sums[2]))
            if self._position_due(batch):  # checkpoint.last_every_n_steps
                elapsed = time.perf_counter() - t0
                self.train_seconds, before = self.train_seconds + elapsed, before + elapsed
                self._save_position(batch + 1, sums, before)
                t0 = time.perf_counter()  # writing is not training time
            signum = self._signal_received()
            if signum is not None:
                elapsed = time.perf_counter() - t0
                self.train_seconds += elapsed
                self._interrupted(epoch, batch + 1, sums, signum, seconds=before + elapsed)
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed
        loss_avg, acc = float(sums[0] / sums[2]), float(sums[1] / sums[2])
        return {"train_loss": loss_avg, "train_accuracy": acc, "train_error": 1.0 - acc}, before + elapsed

    def plan(self, train: TrainConfig) -> int:
        """The steps ``train``'s epochs and max_steps mean for this run, from where it started or was resumed."""
        return planned_steps(train, self.steps_per_epoch, *self._plan_from)

    def _replan(self) -> None:
        self.total_steps = self.plan(self.cfg.train)  # the schedule's span
        # the epochs the run means to train: train.epochs, or fewer that hold train.max_steps (the display's "of")
        done, start = self._plan_from
        self._planned_epochs = min(self.cfg.train.epochs, done + -(-(self.total_steps - start) // self.steps_per_epoch))

    def _out_of_steps(self) -> bool:
        """Whether the run has taken its ``train.max_steps``."""
        return self.cfg.train.max_steps is not None and self._step >= self.cfg.train.max_steps

    def _steps_done(self) -> None:
        """Stop for ``train.max_steps``, unless a callback stopped the run first."""
        if self.stop_reason is None:
            self.stop_reason, self.stopped_by = f"max steps reached ({self.cfg.train.max_steps})", "max_steps"

    def _diverged(self, t0: float, reason: str) -> tuple[None, float]:
        """Stop the run in mid-epoch for a non-finite loss or gradients (what ``_train_epoch`` returns then)."""
        elapsed = time.perf_counter() - t0
        self.train_seconds += elapsed
        self.stop_reason, self.stopped_by = reason, "non_finite_loss"
        return None, elapsed

    def _optimizer_step(self) -> bool:
        """Clip (train.grad_clip) and step; in fp16 through the loss scale, which skips a step whose gradients
        overflowed and then lowers the scale. False where the scale fell below 1: gradients that overflow
        unscaled are not a matter of scale (the loss is finite, but they are not), and the run stops."""
        opt, clip = self.optimizer, self.cfg.train.grad_clip
        if self.scaler is None:
            if clip is not None:
                nn.utils.clip_grad_norm_(self._model.parameters(), clip)
            opt.step()
            return True
        if clip is not None:
            self.scaler.unscale_(opt)  # the norm of the true gradients, not of the scaled ones
            nn.utils.clip_grad_norm_(self._model.parameters(), clip)
        before = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        after = self.scaler.get_scale()
        self.skipped_steps += int(after < before)  # it goes down after a skipped step only (backoff < 1)
        return after >= 1.0

    def _position_due(self, batch: int) -> bool:
        """Whether last.ckpt is to be written after this step, inside the epoch (checkpoint.last_every_n_steps).
        Not at the epoch's last batch, whose end saves anyway; not with weights that diverged in this step (the
        next step's loss stops the run, and last.ckpt keeps the state before)."""
        every = self.cfg.checkpoint.last_every_n_steps
        return (bool(every) and self._step % every == 0 and batch + 1 < self.steps_per_epoch
                and all(bool(torch.isfinite(p).all()) for p in self._model.parameters()))

    def _backward_batch(self, x: torch.Tensor, y: torch.Tensor, batch_rows: int,
                        mix: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        """Forward and backward this process's rows of a batch, in parts with ``train.micro_batch_size`` (one
        part's activations at once), the gradients adding up; returns the loss sum, correct and seen."""
        parts = self._parts(x, y, mix)
        sums = torch.zeros(3, dtype=torch.float64)
        for i, (xp, yp, mixp) in enumerate(parts):
            # DDP averages the gradients across the ranks once, in the last part's backward: the ranks may have
            # other numbers of parts (the last batch splits unevenly), but each makes one such call
            sync = self._world == 1 or i == len(parts) - 1
            with contextlib.nullcontext() if sync else self._forward.no_sync():
                sums += self._backward(xp, yp, batch_rows, mixp)
        return sums

    def _backward(self, x: torch.Tensor, y: torch.Tensor, batch_rows: int,
                  mix: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        """Forward and backward ``x``, a batch of ``batch_rows`` rows or a part of it (its gradients add to
        those in ``.grad``); returns its loss sum, correct and seen. A mixed batch's predictions count as
        correct when they name the label with the larger share."""
        with torch.autocast(self.device.type, dtype=self._autocast_dtype or torch.bfloat16,
                            enabled=self._autocast_dtype is not None):
            logits = self._forward(x)
            loss = self._loss(logits, y, batch_rows, mix)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        major = y if mix is None or mix[1] >= 0.5 else mix[0]
        return torch.tensor([loss.item() * batch_rows / self._world, float((logits.argmax(1) == major).sum()),
                             y.shape[0]], dtype=torch.float64)

    def _batch_rows(self, batch: int) -> int:
        """The rows of the global batch number ``batch`` (the last one holds the remainder)."""
        bs = self.cfg.train.batch_size
        return len(self.data.train) - batch * bs if batch == self.steps_per_epoch - 1 else bs

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, float] | None]:
        """The batch as the model trains on it: augmented, mixed with ``[mixup]`` (then also the partner labels
        and the images' own share), and in the model's memory format."""
        x = augment(x, self.cfg.augment)  # a no-op unless [augment] is enabled
        mix = None
        if self.cfg.mixup.enabled:
            x, partner, share = mix_batch(x, y, self.cfg.mixup, crop=getattr(self._model, "crop", 0))
            mix = (partner, share)
        return (x.contiguous(memory_format=torch.channels_last) if self._channels_last else x), mix

    def compile_ahead(self) -> None:
        """With ``train.compile``: compile the training step before the clock starts, and time it apart
        (``compile_seconds``), so that ``train_seconds`` stays the time of the training itself. On a
        2-core AMD EPYC, compiling took 40 s for the ``fast`` preset, whose training took 3-4 s
        (benchmarks/time_to_accuracy_compile_epyc-avx512.txt).

        torch.compile compiles when it first sees an input shape: this runs one forward and backward pass
        on the epoch's first batch and one on its last (a smaller one, when the batch size does not divide
        the split; dynamo then recompiles with a dynamic batch size, which fits any later size). Every
        process runs both passes, so that DDP's gradient averaging pairs up across them. The passes leave
        no trace in the run: no optimizer step, the gradients are dropped, and batch norm's running
        statistics and the RNG (dropout, augmentation) are put back.

        ``fit`` calls it; ``train`` calls it first, before the run folder is written, so that a step that
        cannot compile (no C++ compiler) leaves no half-made run behind. It does nothing once done, until
        the trainable parameters change, or when nothing is left to train.
        """
        if (not self.cfg.train.compile or self._compiled or self._epoch >= self.cfg.train.epochs
                or self.stop_reason is not None or self._out_of_steps()):
            return
        t0 = time.perf_counter()
        if self.device.type == "cpu":  # (a filter already there is not added again)
            logging.getLogger("torch.utils.cpp_extension").addFilter(_hide_cuda_home_note)
        self._train_mode()
        rows = []
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), keep_running_stats([self._model]):  # both put back on leaving
            last = self.steps_per_epoch - 1  # its own shape only where the epoch leaves a smaller batch
            for start in [0] + ([last] if self._batch_rows(last) != self._batch_rows(0) else []):
                x, y = next(iterate_batches(self.data.train, self.cfg.train.batch_size, start=start, part=self._part,
                                            min_last=self._min_last))
                x, mix = self._prepare(x, y)
                try:
                    with device_memory_errors(self.cfg.train):  # train() calls this outside fit()
                        self._backward_batch(x, y, self._batch_rows(start), mix)  # the parts' shapes (micro-batches)
                except Exception as e:  # inductor's errors run to pages: their start, and the way out
                    # not the compiler's fault: deterministic_errors says whose, or the batch did not fit
                    if deterministic_refusal(e) or isinstance(e, ConfigError):
                        raise
                    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                    cause = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # "backend='inductor' raised:"
                    raise ConfigError(f"train.compile: torch.compile could not compile the training step ({cause}); "
                                      "set train.compile = false to train without compiling") from e
                rows.append(len(y))
        self.optimizer.zero_grad(set_to_none=True)
        self._compiled = True
        if self.device.type == "cuda":  # the passes' kernels finish here, not in the first timed step
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.compile_seconds += seconds
        self.display.log(f"torch.compile: {seconds:.1f} s compiling the training step (batches of "
                         f"{' and '.join(map(str, rows))} images); not counted in the training time")

    def _signal_received(self) -> int | None:
        """SIGINT or SIGTERM if one reached any rank (summed over the ranks, so that all stop at the same point)."""
        signum = self._signals.signum
        if self._world == 1:  # no tensor to build each step for the common case
            return signum
        flags = distributed.all_reduce_sum(
            torch.tensor([signum == signal.SIGINT, signum == signal.SIGTERM], dtype=torch.int32))
        return signal.SIGINT if flags[0] else signal.SIGTERM if flags[1] else None

    def _pending_signal(self) -> None:
        """Act on a signal the guard caught where the loop took no step after it: a resumed run with nothing left
        to train (finished, stopped early, at its max_steps) caught a Ctrl-C in the callbacks' start, then left
        the guard and ran its whole final test as if none had come. Raised as outside the guard (KeyboardInterrupt,
        Signalled), the run stops where it is, its last.ckpt unchanged. A diverged run ends anyway: its summary
        is kept. Under torchrun the ranks would have to agree first: left as it was."""
        signum = self._signals.signum
        if signum is None or self.stopped_by == "non_finite_loss" or self._world > 1:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise_signalled(signum, None)

    def _interrupted(self, epoch: int, batches_done: int, sums: torch.Tensor | None, signum: int,
                     seconds: float = 0.0) -> None:
        """Write the resumable last.ckpt (``batches_done`` into ``epoch``, after ``seconds`` of its training;
        0 batches: the epoch is complete) and stop."""
        path = None if self._run_dir is None else self._run_dir / "last.ckpt"
        if batches_done:  # else the epoch's last.ckpt, just written, is the one to resume from
            path = self._save_position(batches_done, sums, seconds)
        distributed.barrier()  # no rank leaves (tearing down the process group) while rank 0 is still writing
        where = (f"at epoch {epoch}, batch {batches_done} of {self.steps_per_epoch}" if batches_done
                 else f"after epoch {epoch}")
        self.stop_reason, self.stopped_by = f"interrupted by {signal.Signals(signum).name} {where}", "interrupted"
        raise TrainingInterrupted(signum, path)

    def _save_position(self, batches_done: int, sums: torch.Tensor | None, seconds: float) -> Path | None:
        """Write the resumable last.ckpt ``batches_done`` batches into the epoch, after ``seconds`` of its training
        (every rank calls it; rank 0 writes)."""
        if self._world > 1:  # every rank's RNG goes into rank 0's checkpoint: the resumed dropout is exact
            self._rng_ranks = distributed.gather_objects(_rng_state())
        if self._run_dir is None:
            return None
        return self._write(self._run_dir / "last.ckpt", batch=batches_done, partial=sums, partial_seconds=seconds,
                           resumable=True)

    def _train_mode(self) -> None:
        self._model.train()
        hold_frozen_batch_norm(self._model)  # frozen BN layers keep their statistics (see finetune.py)

    def _unfreeze(self) -> bool:
        """Release the frozen parameters into a new optimizer group; False if none are frozen (any more)."""
        if not self._frozen:
            return False
        for p in self._frozen:
            p.requires_grad_(True)
        self.optimizer.add_param_group({"params": self._frozen})
        fill_missing_state(self.optimizer)  # SGD's momentum for the new group (see there)
        self._frozen = []
        self._compiled = False
        if self._world > 1:  # DDP averages the gradients of the parameters that were trainable when it was built
            self._wrap()
        return True

    def _scheduled_lr(self, step: int) -> float:
        # The epochs done before ``step``, counted from the start of this run or its resumed epoch: an earlier epoch
        # that train.max_steps cut short has fewer steps than steps_per_epoch (step // steps_per_epoch lags behind).
        done, start = self._plan_from
        return lr_at(
            step,
            epoch=done + (step - start) // self.steps_per_epoch if step >= start else None,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            base_lr=self.cfg.optimizer.lr,
            cfg=self.cfg.schedule,
        )

    # ---- checkpoints ------------------------------------------------------------

    def _payload(
        self, batch: int = 0, partial: torch.Tensor | None = None, partial_seconds: float = 0.0, resumable: bool = False
    ) -> dict[str, Any]:
        """Everything a checkpoint holds. ``resumable``: written where no callback is halfway through the epoch's
        decisions (last.ckpt); files written from a callback (``save_checkpoint``) hold a usable model but not a
        consistent training state."""
        data = self.data
        return {
            "model_name": self.cfg.model.name,
            "config": config_to_dict(self.cfg),
            "model": self._model.state_dict(),
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "image_size": list(data.image_size),
            "classes": list(data.classes),
            "dataset": data.dataset,
            "mean": list(data.mean),
            "std": list(data.std),
            "optimizer": self.optimizer.state_dict(),
            "lr_scale": self.lr_scale,
            "epoch": self._epoch,
            "step": self._step,
            "steps_per_epoch": self.steps_per_epoch,  # a resume under other data settings checks the schedule by it
            "batch": batch,
            "partial": partial if partial is not None else torch.zeros(3, dtype=torch.float64),
            "partial_seconds": partial_seconds,  # the training time of the epoch's first ``batch`` batches
            "rng": _rng_state(),
            # Multi-process runs: the RNG state of every rank, in rank order (rank 0's is "rng" too).
            **({"rng_ranks": self._rng_ranks} if self._world > 1 else {}),
            "callbacks": self.callbacks.state_dict(),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "compile_seconds": self.compile_seconds,
            "stop_reason": self.stop_reason,
            "stopped_by": self.stopped_by,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "ema_sha256": weights_digest(self.ema.module.state_dict()) if self.ema is not None else None,
            "ema_best": self._best_ema,
            "ema_monitor": self._ema_choice._monitor_state(),
            # fp16: the loss scale as it stands (a resume starting again from 2**16 would skip steps anew)
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "skipped_steps": self.skipped_steps,
            "resumable": resumable,
        }

    def _write(self, path: Path, **kw) -> Path:
        return save_checkpoint(path, self._payload(**kw))

    def _save_ema(self, epoch: int, metrics: dict[str, float]) -> None:
        """ema.ckpt: the weight average of the epoch where ``_ema_choice`` saw the best value, as a model checkpoint."""
        if self.ema is None:
            return
        value = self._ema_choice._value(metrics)
        if not self._ema_choice._is_improvement(value, self._best_ema):
            return  # as for best.ckpt, the first of equal values stays, and a non-finite one never counts
        self._best_ema = value
        if self._run_dir is not None:
            self._save_model(self._run_dir / "ema.ckpt", self.ema.module.state_dict())

    def _save_model(self, path: Path, state: dict[str, torch.Tensor], **fields: Any) -> Path:
        """A checkpoint of a model to use, not to resume (no training state): ``state`` as its weights,
        ``fields`` in place of the current ones."""
        payload = {k: v for k, v in self._payload().items() if k not in _TRAINING_STATE}
        return save_checkpoint(path, {**payload, "model": state, **fields})

    def _save_last(self) -> None:
        if self._run_dir is not None:
            self._write(self._run_dir / "last.ckpt", resumable=True)

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint written by this trainer (``last.ckpt``)."""
        stored = check_resume(payload, self.cfg)
        done, batch = int(payload["epoch"]), int(payload.get("batch", 0))
        # The settings that lay out an epoch's batches which this resume changes: (key, "section.key was A, now B")
        changed = [(k, f"{s}.{k} was {getattr(getattr(stored, s), k)}, now {getattr(getattr(self.cfg, s), k)}")
                   for s, k in _EPOCH_LAYOUT if getattr(getattr(stored, s), k) != getattr(getattr(self.cfg, s), k)]
        if batch and changed:
            raise ConfigError(
                f"the run was interrupted {place_in_run(done, batch)}; that place means the same "
                f"images only with the settings that laid out the epoch's batches, but "
                f"{'; '.join(m for _, m in changed)}: resume without changing them"
            )
        stored_steps = payload.get("steps_per_epoch")
        # Checkpoints from before "steps_per_epoch" was stored: the steps of the finished epochs are epochs x the
        # epoch's steps (a schedule other than constant refused any change of them), else this data's epoch was
        # the run's. Inside an epoch they are not checked: an earlier resume may have changed the batch size.
        old_steps = int(stored_steps or ((int(payload["step"]) - batch) // done if done else self.steps_per_epoch))
        # Inside an epoch the settings checked above are unchanged: a new length comes from the number of processes.
        if batch and stored_steps and old_steps != self.steps_per_epoch:
            old_world = len(payload.get("rng_ranks") or [None])  # each process's random state: stored with 2 or more
            raise ConfigError(
                f"the run was interrupted {place_in_run(done, batch, old_steps)}; with "
                f"{self._world} process{'es' * (self._world > 1)} the epoch would have {self.steps_per_epoch} "
                "batches (the number of processes sets how small the last batch may be), so the rest of the epoch "
                "would hold other images: resume with the number of processes it was interrupted with, "
                + (f"{old_world} (--nproc {old_world})" if old_world > 1 else "1 (without --nproc)")
            )
        if batch > self.steps_per_epoch:  # == : interrupted after an epoch's last step, before its validation
            raise CheckpointError(f"the checkpoint says batch {batch} of an epoch of {self.steps_per_epoch} batches: "
                                  "it was not written by `mnistlab train` for this data")
        if stored.optimizer.name != self.cfg.optimizer.name:
            raise ConfigError(
                f"optimizer.name was {stored.optimizer.name}, now {self.cfg.optimizer.name}: the checkpoint's optimizer "
                "state (moments, momentum) belongs to the first; resume without changing it, or start a new run from "
                "this one's weights with --init-from"
            )
        # A constant rate's warm-up counts steps too: resumed inside it (or inside the longer one that the new
        # epoch length makes), the rate fell back part-way and climbed again.
        in_warmup = int(payload["step"]) < max(warmup_steps(self.cfg.schedule, old_steps),
                                               warmup_steps(self.cfg.schedule, self.steps_per_epoch))
        if not batch and old_steps != self.steps_per_epoch and (self.cfg.schedule.name != "constant" or in_warmup):
            why = ("; ".join(m for k, m in changed if k != "seed")  # the seed orders the images, not how many
                   or "the number of processes sets how small the last batch may be")
            name = self.cfg.schedule.name
            what, otherwise = ((f"the {name} schedule counts steps", "or with schedule.name = constant")
                               if name != "constant" else
                               ("the constant schedule's warm-up counts steps", "or once the warm-up is over"))
            raise ConfigError(
                f"an epoch was {old_steps} steps and would now be {self.steps_per_epoch} ({why}): "
                f"{what}, so the {int(payload['step'])} taken would no longer line up with the epochs; resume with "
                f"the same batch size and data settings, {otherwise}"
            )
        if tuple(stored.finetune.freeze) != tuple(self.cfg.finetune.freeze):
            # The optimizer's state is matched to the parameters by position: with another frozen set, one
            # tensor's Adam moments would silently drive another's updates.
            raise ConfigError(
                f"finetune.freeze was {list(stored.finetune.freeze)}, now {list(self.cfg.finetune.freeze)}: the "
                "checkpoint's optimizer state belongs to the parameters the run trained; resume without changing "
                "it, or start a new run from this one's weights with --init-from"
            )
        if stored.model.dropout != self.cfg.model.dropout and set(payload["model"]) != set(self._model.state_dict()):
            # Dropout layers exist only where dropout > 0: turning it on or off renumbers the classifier's layers
            # (classifier.0 becomes classifier.1), and load_weights called the run "another architecture".
            now_on = any(isinstance(m, nn.Dropout) for m in self._model.modules())
            keep = "model.dropout=0" if now_on else "another model.dropout above 0 (a new rate changes only training)"
            raise ConfigError(
                f"model.dropout was {stored.model.dropout}, now {self.cfg.model.dropout}: turning dropout "
                f"{'on' if now_on else 'off'} {'adds' if now_on else 'removes'} the classifier's Dropout layers, "
                f"which renumbers its layers, so the run's weights no longer line up with the network; resume with "
                f"{keep}, or start a new run from its weights with --init-from"
            )
        load_weights(self._model, payload["model"], source="the checkpoint")
        # A checkpoint written after the unfreeze holds the optimizer with the released group: rebuild that first.
        if released_by(self.cfg.finetune.unfreeze_at, int(payload["epoch"]), int(payload.get("batch", 0))):
            self._unfreeze()
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            hint = ""
            if stored.finetune.unfreeze_at != self.cfg.finetune.unfreeze_at:
                hint = (f"; finetune.unfreeze_at was {stored.finetune.unfreeze_at}, now "
                        f"{self.cfg.finetune.unfreeze_at}, which changes whether the frozen parameters have their "
                        "own optimizer group at this point: resume without changing it")
            raise CheckpointError(f"the optimizer state in the checkpoint does not fit this config ({e}){hint}") from None
        _check_optimizer_state(self.optimizer)
        lay_out_state_as_params(self.optimizer)  # the checkpoint's layout may not be this run's
        # load_state_dict also brought back each group's settings as they were (weight decay, betas, eps,
        # momentum): the config's, as given for this resume, are the ones to train on under.
        for group in self.optimizer.param_groups:
            group.update({k: v for k, v in self.optimizer.defaults.items() if k != "params"})
        fill_missing_state(self.optimizer)
        self.lr_scale = float(payload["lr_scale"])
        self._epoch, self._step = int(payload["epoch"]), int(payload["step"])
        # The epochs trained before the one this resume continues (or the next), and their steps: the schedule
        # is planned from there, so an epoch that train.max_steps ended early is not counted whole.
        self._plan_from = (done, self._step - batch)
        self._replan()
        self.history = list(payload["history"])
        self.train_seconds = float(payload["train_seconds"])
        self.compile_seconds = float(payload.get("compile_seconds", 0.0))  # absent from older checkpoints
        if self.scaler is not None and payload.get("grad_scaler"):  # else (a run that was not fp16) from 2**16
            self.scaler.load_state_dict(payload["grad_scaler"])
        self.skipped_steps = int(payload.get("skipped_steps", 0))
        # A run that stopped early (and was, say, killed during its final test) does not train on when
        # resumed as it was: that would not be the run the user started. Given new settings (more
        # epochs, another patience or criterion), it trains on under them.
        self.stop_reason, self.stopped_by = payload.get("stop_reason"), payload.get("stopped_by")
        self._check_callback_states(payload.get("callbacks", {}))
        if self.stop_reason is not None and _training_settings(config_to_dict(self.cfg)) != _training_settings(
            config_to_dict(stored)
        ):
            self.stop_reason = self.stopped_by = None
        if self.ema is not None:
            state = payload.get("ema")
            if state is None:  # EMA switched on when resuming: the average starts from the current weights
                self.ema = WeightAverage(self._model, self.cfg.ema.decay, self.cfg.ema.warmup)
            elif weights_digest(state["weights"]) != payload.get("ema_sha256"):
                raise CheckpointError("the checkpoint's weight average is corrupted (its SHA-256 does not match)")
            else:
                self.ema.load_state_dict(state)
                if self._ema_choice._same_monitor(payload.get("ema_monitor", {})):  # else ema.ckpt is chosen afresh
                    self._best_ema = payload.get("ema_best")
        rng = payload["rng"]
        if self._world > 1:
            ranks = payload.get("rng_ranks") or []
            # Resumed with another process count (or from a one-process run), ranks other than 0 keep the
            # streams they were seeded with: the run goes on correctly, though its dropout is not the same.
            rng = ranks[self._rank] if len(ranks) == self._world else rng if self._rank == 0 else None
        _set_rng_state(rng)
        self._resume, self._resume_rng = payload, rng

    def _check_callback_states(self, states: Any) -> None:
        """Load the stored callback states into copies of mnistlab's own callbacks, so that one that does not
        fit fails here, before anything is written (fit() loads them into the real ones after on_train_begin)."""
        if not isinstance(states, dict):
            raise CheckpointError(f"the checkpoint's callback states are not a table ({type(states).__name__})")
        for key, cb in zip(self.callbacks._keys(), self.callbacks.callbacks):
            if key not in states or not type(cb).__module__.startswith("mnistlab."):
                continue  # a user's callback may hold what cannot be copied; its own load comes in fit()
            try:
                copy.deepcopy(cb).load_state_dict(states[key])
            except Exception as e:  # noqa: BLE001 - whatever a damaged state makes a callback raise
                raise CheckpointError(f"the state of {key} in the checkpoint does not fit it ({type(e).__name__}: "
                                      f"{e})") from None

    # ---- TrainerHandle ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step(self) -> int:
        return self._step

    @property
    def planned_epochs(self) -> int:
        return self._planned_epochs

    @property
    def run_dir(self) -> Path | None:
        # Absolute: save_checkpoint takes a relative path under the run folder, so with train(out="runs/x")
        # a callback's save_checkpoint(trainer.run_dir / "a.ckpt") wrote runs/x/runs/x/a.ckpt.
        return None if self._run_dir is None else self._run_dir.absolute()

    @property
    def is_main(self) -> bool:
        return self._rank == 0

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def lr(self) -> float:
        # The next step's rate, the one set_lr replaces: a callback that scales it (ReduceLROnPlateau) must
        # start from the rate the schedule is about to use, or a schedule's change at an epoch boundary (the
        # step schedule's gamma) would be undone by the scale and stay undone.
        return self._scheduled_lr(self._step) * self.lr_scale

    def _last_lr(self) -> float:
        """The rate of the last step taken (the epoch metrics' ``lr``)."""
        return self._scheduled_lr(max(self._step - 1, 0)) * self.lr_scale

    def set_lr(self, lr: float) -> None:
        rate = float(lr)  # a NumPy or tensor number too: the checkpoints hold plain floats
        if not (math.isfinite(rate) and rate >= 0):  # last.ckpt would hold a scale no resume accepts
            raise ValueError(f"set_lr: the rate must be a finite number of 0 or more, got {lr!r}")
        lr = rate
        scheduled = self._scheduled_lr(self._step)
        if scheduled <= 0:  # the end of a cosine schedule with min_lr 0: no scale makes 0 anything else, and a
            # scale of 0 would hold every later rate at 0 (a resume with more epochs, where the schedule rises again)
            logging.getLogger("mnistlab").warning("set_lr(%g) changes nothing: the schedule's rate for the next step "
                                                  "is 0", lr)
            return
        self.lr_scale = lr / scheduled

    def request_stop(self, reason: str, by: str = "callback") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason = str(reason)  # summary.json and the checkpoints hold text
            self.stopped_by = "early_stopping" if reason.lower().startswith("early stopping") else str(by)

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()}

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        load_weights(self._model, state, source="set_weights", check_values=False)

    def restore_weights(self, epoch: int, state: dict[str, torch.Tensor]) -> None:
        # best.ckpt is what the run is tested with and what evaluate, predict and ensemble read from the run
        # folder; restored weights that stayed in memory would be tested and kept nowhere.
        epoch = operator.index(epoch)  # a NumPy integer too (np.argmax(...) + 1): checkpoints hold plain ints
        self.set_weights(state)
        self.restored_epoch = epoch
        if self._run_dir is not None:
            self._save_model(self._run_dir / "best.ckpt", self._model.state_dict(), epoch=epoch,
                             history=[h for h in self.history if h["epoch"] <= epoch])

    def save_checkpoint(self, path: str | Path) -> Path:
        path = Path(path)
        if not self.is_main:  # rank 0 writes it: the other ranks have no folder, and one file needs one writer
            return path
        if not path.is_absolute():
            if self._run_dir is None:
                raise ValueError("save_checkpoint needs an absolute path when the run has no folder")
            path = self._run_dir / path
        differs = self.model_differs()
        if differs is not None:
            raise ConfigError(f"save_checkpoint: {differs}; give fit() the config that describes the model")
        try:  # as ModelCheckpoint makes its dirpath
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointWriteError(f"save_checkpoint: cannot create the folder {path.parent}: "
                                       f"{e.strerror or e}") from None
        # The model, not the training state: written while the epoch's callbacks decide, such a file cannot be
        # resumed from, and the optimizer's moments, the RNG and the callbacks' states (early stopping's copy of
        # the best weights) made every best.ckpt and top-k file about 4x the weights.
        return self._save_model(path, self._model.state_dict())

    def validation_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.val.images, self.data.val.labels

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return predict_logits(self._model, images, self.cfg.train.eval_batch_size)  # each layer's mode kept

