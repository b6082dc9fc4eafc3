"""Every hyperparameter in one typed place.

A :class:`Config` is a tree of frozen dataclasses. It is loaded from TOML
(:func:`load_config`), changed by ``--set section.key=value`` overrides
(:func:`apply_overrides`), checked for unknown keys, wrong types and bad values
(each a :class:`~mnistlab.errors.ConfigError` that lists the valid choices), and
written back as TOML into every run folder and as a dict into every checkpoint.

>>> cfg = apply_overrides(Config(), ["train.epochs=3", "optimizer.name=sgd"])
>>> cfg.train.epochs, cfg.optimizer.name
(3, 'sgd')
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import operator
import os
import re
import string
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import ConfigError
from .folders import expand_home, shell_path

DATASETS = ("mnist", "fashion-mnist", "kmnist")
OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "adamax", "rmsprop", "adadelta", "adagrad")
SCHEDULES = ("constant", "step", "multistep", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
STOP_CRITERIA = ("none", "patience", "gl", "pq", "up")
MODES = ("auto", "min", "max")
MAX_THREADS = 1024
MAX_ELASTIC_ALPHA = 1000.0  # pixels; Simard et al. used 34 (with sigma 4)
MIN_ELASTIC_SIGMA = 0.01  # pixels; Simard et al. used 4
MIN_MIX_ALPHA = 0.001  # mixup.alpha, mixup.cutmix_alpha: torch's Beta(a, a) draws 0.5 (its gammas underflow) for a
# quarter of the draws at 0.001, so below 0.01 training/mixing.py draws it in log space, checked down to here.
# Above the most, Beta(a, a) draws 0.5 give or take 0.00035 (one standard deviation) at 1e6 already; from about
# 9e307 its two gamma draws overflow their sum, and every share came out 0 (each image replaced by its partner)
MAX_MIX_ALPHA = 1e6
MAX_WARMUP_EPOCHS = 1e6  # past any run; 1e308 overflowed the count of warm-up steps
# bytes of a checkpoint file name filled in from checkpoint.filename: file systems allow 255, and the run adds
# "-v1" to a name that is taken and ".NAME.tmp-PID" while writing
MAX_CHECKPOINT_NAME = 200
IMAGE_SIDE = 28  # every dataset of DATASETS has 28x28 images
# The metrics of an epoch, named once here. EPOCH_METRICS: the keys of every on_epoch_end metrics dict
# (callbacks/base.py). MONITORS: what the config's callbacks may monitor, validation first, and the weight
# average's metrics, which exist only with [ema] enabled.
_TRAIN_METRICS = ("train_loss", "train_accuracy", "train_error")
_VAL_METRICS = ("val_loss", "val_accuracy", "val_error")
EMA_METRICS = ("ema_val_loss", "ema_val_accuracy")
FLOAT32_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny; the config does not import torch
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max
EPOCH_METRICS = ("epoch", *_TRAIN_METRICS, *_VAL_METRICS, "lr", "seconds")
MONITORS = (*_VAL_METRICS, *_TRAIN_METRICS, *EMA_METRICS, "lr", "epoch", "seconds")


def _choice(section: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key} = {value!r} is not valid; choose one of: {', '.join(choices)}")


# Seeds are below 2**32: torch's CPU generator keeps 32 bits of one, and Optuna's samplers (sweep.seed) seed
# NumPy's RandomState, which takes 0 to 2**32 - 1.
SEED_LIMIT = 2**32


def _seed(section: str, key: str, value: int) -> None:
    # torch takes seeds up to 2**64 - 1, but its CPU generator (mt19937) keeps only the low 32 bits: 2**32 drew
    # the numbers of 0 (the same validation split, the same initial weights) as if it were another seed.
    if value >= SEED_LIMIT:
        raise ConfigError(f"{section}.{key} must be below 2**32 = {SEED_LIMIT}, got {value}: torch's CPU generator "
                          f"keeps only a seed's low 32 bits, so it would draw what {value % SEED_LIMIT} draws")


def _positive(section: str, obj: Any, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = getattr(obj, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{key} must be a finite number, got {value}")
        if value < 0 or (value == 0 and not allow_zero):
            need = "zero or more" if allow_zero else "greater than zero"
            raise ConfigError(f"{section}.{key} must be {need}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and its shape. ``None`` keeps the model's own default."""

    name: str = "fast"  # a name from `mnistlab models`
    channels: tuple[Union[int, str], ...] | None = None  # conv kernel counts; VGG-style lists may hold "M" (max-pool)
    kernel_size: int | None = None  # conv kernel size in pixels (fast: the first conv only)
    stride: int | None = None  # conv stride (cnn only)
    padding: int | None = None  # conv zero padding in pixels (lenet5: the first conv only)
    width: float | None = None  # multiplier on every channel count (0.25 = a quarter as wide)
    hidden: tuple[int, ...] | None = None  # widths of the hidden linear layers of the classifier
    dropout: float | None = None  # dropout probability before linear layers
    batch_norm: bool | None = None  # batch norm after each conv
    bn_after_pool: bool | None = None  # cnn/fast/lenet with batch_norm: BN after the pool (conv, pool, BN, ReLU)
    crop: int | None = None  # cnn/fast/lenet: pixels cut from each side of the image before the first conv

    def __post_init__(self) -> None:
        _typed(self, "model")
        _positive("model", self, "kernel_size", "stride", "width")
        _positive("model", self, "padding", "crop", allow_zero=True)
        if self.crop is not None and 2 * self.crop >= IMAGE_SIDE:  # a sweep checks its choices with this
            raise ConfigError(f"model.crop must be below {IMAGE_SIDE // 2} pixels (half the images' side), "
                              f"got {self.crop}; 1-2 pixels cut MNIST's empty border")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for c in self.channels or ():
            if not (c == "M" or (isinstance(c, int) and not isinstance(c, bool) and c > 0)):
                raise ConfigError(f"model.channels entries must be positive integers or \"M\", got {c!r}")
        for h in self.hidden or ():
            if h <= 0:
                raise ConfigError(f"model.hidden entries must be positive, got {h}")

    def options(self) -> dict[str, Any]:
        """The model options to pass to ``build_model`` (``None`` ones are dropped there)."""
        opts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}
        for key in ("channels", "hidden"):
            if opts[key] is not None:
                opts[key] = list(opts[key])
        return opts


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist | kmnist
    dir: str | None = None  # data folder; else $MNISTLAB_DATA, else the user's cache folder
    val_size: int = 5000  # images carved from the training set for validation (training needs 1 or more)
    split_seed: int = 0  # fixed seed of the train/validation split (independent of train.seed)
    # train on N of the training images only, a seeded random subset (quick runs; above the split's size: all)
    train_limit: int | None = None
    # test the run on the first N test images only (a quick check, as Lightning's limit_test_batches; the final
    # line and summary.json say how many); `mnistlab evaluate` and `ensemble` test on all of them
    test_limit: int | None = None
    download: bool = True  # download (with checksum checks) when files are missing

    def __post_init__(self) -> None:
        if isinstance(self.dir, os.PathLike):  # a pathlib.Path from the Python API: stored (and written) as text
            object.__setattr__(self, "dir", os.fspath(self.dir))
        _typed(self, "data")
        if self.dir is not None and not self.dir.strip():  # a shell variable that was not set: not "the default"
            raise ConfigError("data.dir must be a folder, got an empty string; leave it unset for the default "
                              "($MNISTLAB_DATA, else the cache folder)")
        _choice("data", "dataset", self.dataset, DATASETS)
        _positive("data", self, "val_size", "split_seed", allow_zero=True)
        _positive("data", self, "train_limit", "test_limit")
        _seed("data", "split_seed", self.split_seed)


def unread_keys(cfg: Any, chosen: str, reads: dict[str, tuple[str, ...]],
                order: Iterable[str] | None = None) -> list[tuple[str, list[str]]]:
    """The keys of a config section set away from their defaults that the ``chosen`` schedule, optimizer or
    criterion does not read (``reads``: the keys each one reads), each with the ones that read it; in
    ``order``, else as ``reads`` lists them."""
    defaults = type(cfg)()
    keys = order if order is not None else dict.fromkeys(k for keys in reads.values() for k in keys)
    return [(key, [name for name, read in reads.items() if key in read]) for key in keys
            if key not in reads[chosen] and getattr(cfg, key) != getattr(defaults, key)]


def and_list(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def unread_settings(section: str, cfg: Any, reads: dict[str, tuple[str, ...]],
                    notes: dict[str, str] | None = None) -> list[str]:
    """Warnings for the keys of a section set away from their defaults that the chosen ``cfg.name`` does not
    read (``reads``: the keys each name reads); ``notes`` adds a word on a key.

    >>> unread_settings("optimizer", OptimizerConfig(name="adam", nesterov=True), OPTIMIZER_READS)
    ['optimizer.nesterov = True is not used by the adam optimizer (it is read by sgd only)']
    """
    notes = notes or {}
    return [f"{section}.{key} = {getattr(cfg, key)!r} is not used by the {cfg.name} {section} "
            f"(it is read by {and_list(readers)} only{f'; {notes[key]}' if key in notes else ''})"
            for key, readers in unread_keys(cfg, cfg.name, reads)]


# The keys of [optimizer] each optimizer reads besides name, lr and weight_decay (see unread_settings).
OPTIMIZER_READS = {"sgd": ("momentum", "nesterov"), "adam": ("betas", "eps"), "adamw": ("betas", "eps"),
                   "nadam": ("betas", "eps"), "adamax": ("betas", "eps"),
                   "rmsprop": ("rho", "momentum", "centered", "eps"), "adadelta": ("rho", "eps"), "adagrad": ("eps",)}
# What a key left unset (None) means for each optimizer: PyTorch's defaults, except SGD's momentum (0.9, as
# every preset of configs/ trains with). Keras' differ a little: RMSprop rho 0.9 and eps 1e-7, Adadelta rho 0.95,
# Adagrad eps 1e-7 and its sums starting at 0.1 (PyTorch's at 0, as here).
OPTIMIZER_DEFAULTS = {
    "sgd": {"momentum": 0.9, "weight_decay": 0.0},
    "adam": {"eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"eps": 1e-8, "weight_decay": 0.01},  # without it AdamW trains exactly as Adam
    "nadam": {"eps": 1e-8, "weight_decay": 0.0},
    "adamax": {"eps": 1e-8, "weight_decay": 0.0},
    "rmsprop": {"rho": 0.99, "momentum": 0.0, "eps": 1e-8, "weight_decay": 0.0},
    "adadelta": {"rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},  # its eps sets the size of the first steps
    "adagrad": {"eps": 1e-10, "weight_decay": 0.0},
}


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"  # sgd | adam | adamw | nadam | adamax | rmsprop | adadelta | adagrad
    lr: float = 0.01  # peak learning rate (the schedule scales it); Adadelta is usually run at 1.0
    # The keys below left unset (None) take the optimizer's own default: OPTIMIZER_DEFAULTS, and setting().
    momentum: float | None = None  # SGD (unset: 0.9), RMSprop (unset: 0)
    nesterov: bool = False  # SGD only
    # Adam/AdamW/NAdam/Adamax (Adamax's second is the decay of its running maximum of |gradient|); short
    # memories suit a one-epoch recipe: PyTorch's and Keras' are (0.9, 0.999)
    betas: tuple[float, float] = (0.7, 0.9)
    # Adam/AdamW/NAdam/Adamax/RMSprop (unset: 1e-8), Adadelta (unset: 1e-6), Adagrad (unset: 1e-10)
    eps: float | None = None
    # RMSprop (PyTorch's alpha; unset: 0.99), Adadelta (unset: 0.9): decay of the running mean of squared gradients
    rho: float | None = None
    centered: bool = False  # RMSprop: divide by the gradient's variance, not its mean square
    # L2 (all but AdamW) or decoupled (AdamW); unset: 0, and 0.01 for AdamW
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        _typed(self, "optimizer")
        _choice("optimizer", "name", self.name, OPTIMIZERS)
        _positive("optimizer", self, "lr", "eps")
        _positive("optimizer", self, "momentum", "weight_decay", "rho", allow_zero=True)
        if self.eps is not None and self.eps < FLOAT32_TINY:  # the fp32 step rounds it to 0: 0/0 gives NaN
            raise ConfigError(f"optimizer.eps must be at least {FLOAT32_TINY:.3g} (float32's smallest normal "
                              f"number; below it the optimizer step divides by 0), got {self.eps:g}")
        if self.momentum is not None and self.momentum >= 1.0:  # a velocity that never decays: steps grow unbounded
            raise ConfigError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        if self.rho is not None and self.rho >= 1.0:  # the mean of squares would stay 0: steps of lr / sqrt(eps)
            raise ConfigError(f"optimizer.rho must be in [0, 1), got {self.rho}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {list(self.betas)}")
        # SGD's alone: nesterov with rmsprop (which reads momentum) was refused as if it needed it, where any other
        # optimizer that does not read nesterov gets the warning (unread_settings)
        if self.name == "sgd" and self.nesterov and self.setting("momentum") == 0:
            raise ConfigError("optimizer.nesterov needs optimizer.momentum > 0")

    def setting(self, key: str) -> Any:
        """The value to train with: the key as set, else this optimizer's default (OPTIMIZER_DEFAULTS).

        >>> OptimizerConfig(name="rmsprop").setting("momentum"), OptimizerConfig(name="sgd").setting("momentum")
        (0.0, 0.9)
        """
        value = getattr(self, key)
        return OPTIMIZER_DEFAULTS[self.name].get(key) if value is None else value


def stored_before_own_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict that a run stored before unset optimizer keys meant each optimizer's own default, as it
    would be stored now: its momentum 0.9 and eps 1e-8 were the defaults then, stored for every optimizer, and
    are unset now (the same values for sgd, adam and adamw, the optimizers of that time), so that resuming an
    old Adam run does not warn that Adam does not read momentum. A dict of now (its [optimizer] has ``rho``)
    is returned as it is.

    >>> stored_before_own_defaults({"optimizer": {"name": "adam", "momentum": 0.9, "eps": 1e-8}})["optimizer"]
    {'name': 'adam'}
    """
    optimizer = data.get("optimizer") if isinstance(data, dict) else None
    if not isinstance(optimizer, dict) or "rho" in optimizer:
        return data
    old = {"momentum": 0.9, "eps": 1e-8}
    return {**data, "optimizer": {k: v for k, v in optimizer.items() if not (k in old and v == old[k])}}


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, a pure function of the step (see training/schedules.py)."""

    name: str = "onecycle"  # constant | step | multistep | cosine | onecycle
    warmup_epochs: float = 0.0  # linear warm-up from 0 (constant, step, multistep, cosine)
    step_epochs: int = 1  # step: multiply by gamma every this many epochs
    # multistep: multiply by gamma after each of these epochs (PyTorch's MultiStepLR, Keras'
    # PiecewiseConstantDecay), e.g. [10, 15] for a drop at a half and three quarters of 20 epochs
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1  # step, multistep: factor
    min_lr: float = 0.0  # cosine: final learning rate
    pct_start: float = 0.25  # onecycle: fraction of steps spent rising
    div_factor: float = 10.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 100.0  # onecycle: end at lr / div_factor / final_div_factor

    def __post_init__(self) -> None:
        _typed(self, "schedule")
        _choice("schedule", "name", self.name, SCHEDULES)
        _positive("schedule", self, "step_epochs", "gamma", "div_factor", "final_div_factor")
        _positive("schedule", self, "warmup_epochs", "min_lr", allow_zero=True)
        if self.warmup_epochs > MAX_WARMUP_EPOCHS:
            raise ConfigError(f"schedule.warmup_epochs must be at most {MAX_WARMUP_EPOCHS:g}, got {self.warmup_epochs}")
        for key in ("div_factor", "final_div_factor"):  # below 1 the one-cycle schedule starts or ends above its peak
            if getattr(self, key) < 1.0:
                raise ConfigError(f"schedule.{key} must be at least 1 (the one-cycle schedule divides the peak rate "
                                  f"by it), got {getattr(self, key)}")
        if not 0.0 < self.pct_start < 1.0:
            raise ConfigError(f"schedule.pct_start must be in (0, 1), got {self.pct_start}")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"schedule.milestones must be epochs of 1 or more in increasing order, got "
                              f"{list(self.milestones)}")
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("schedule.name = multistep needs schedule.milestones: the epochs after which the rate "
                              "is multiplied by schedule.gamma, e.g. [10, 15]")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2  # passes over the training split
    batch_size: int = 256  # images per step, over all processes of a multi-process run
    # Stop before an epoch that could take the training time (train_seconds) past this many minutes
    # (callbacks/time_limit.py); none: no limit.
    max_minutes: float | None = None
    # Stop after this many optimizer steps in all (Lightning's max_steps), in mid-epoch if need be: that epoch is
    # validated and recorded like the others. The schedule is planned over min(epochs x steps per epoch, max_steps),
    # so a one-cycle or cosine schedule ends at the last step; none: the epochs alone.
    max_steps: int | None = None
    # images per forward pass when evaluating (500 keeps a small CNN's maps in cache); on a CPU a big model takes
    # fewer, so that its largest activation stays under glibc's mmap threshold (training/evaluate.py rows_per_pass)
    eval_batch_size: int = 500
    seed: int = 0  # weights, shuffling and dropout; CPU runs with the same seed repeat exactly
    device: str = "auto"  # auto (CUDA, then MPS, then CPU) | cpu | cuda | mps
    label_smoothing: float = 0.0  # cross-entropy label smoothing (of val_loss and test_loss too, as in Keras)
    # Keras' class_weight: each training image's loss times its class's weight, one weight per class in the
    # dataset's order (the batch's loss stays the mean over its images); "balanced": n / (classes x n of the
    # class) over the training split; none: unweighted. val_loss and test_loss are not weighted.
    class_weights: tuple[float, ...] | str | None = None
    grad_clip: float | None = None  # clip the global gradient norm to this
    threads: int | None = None  # torch intra-op threads on CPU (None: PyTorch's default)
    channels_last: bool | None = None  # NHWC memory format; none: auto (on CUDA, and on CPU for models it speeds up)
    # torch.compile the training forward pass; it compiles before the first epoch, timed as summary.json's
    # compile_seconds, apart from train_seconds
    compile: bool = False
    # auto (bf16 autocast on a GPU, Ampere on, or a CPU that computes in bf16; else fp32) | fp32 | bf16 |
    # fp16 (float16 autocast with a dynamic loss scale, for GPUs before Ampere: a T4, V100; CUDA and CPU only)
    precision: str = "auto"
    progress: bool = True  # progress bars when the output is a terminal or a Jupyter notebook
    # report.html and its plots/ at the end of a run: seconds of plotting (`mnistlab report RUN` writes them later)
    report: bool = True
    # On a CPU under Linux (glibc): keep freed memory in the process for the next step instead of handing it
    # back to the OS and faulting it in again (training/allocator.py; 1.3-1.7x the training rate of the small CNNs
    # on the AVX-512 EPYC, benchmarks/allocator.txt; 1.0-1.3x on the AVX2 one, allocator_epyc-avx2.txt).
    reuse_memory: bool = True
    grad_checkpoint: bool = False  # recompute conv-block / residual-block activations in backward: less memory, ~1.4x the step time
    # Split each batch into parts of at most this many images (per process), each run forward and backward in turn
    # before the batch's one optimizer step: the whole batch's gradient in the memory of a part (Lightning's
    # accumulate_grad_batches, with batch_size the batch it adds up to). Batch norm normalizes each part by its
    # own statistics. None: one pass per batch.
    micro_batch_size: int | None = None
    # Multi-process runs (torchrun / --nproc): batch-norm statistics over the whole global batch rather than
    # each process's share. Needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation.
    sync_batchnorm: bool = False
    # Deterministic algorithms only (torch.use_deterministic_algorithms, cuDNN's deterministic convolutions, no
    # TF32): two same-seed runs on one GPU then match bit for bit. CPU runs already do; a GPU run is slower.
    deterministic: bool = False

    def __post_init__(self) -> None:
        _typed(self, "train")
        _positive("train", self, "epochs", "batch_size", "eval_batch_size", "grad_clip", "threads", "max_minutes",
                  "max_steps", "micro_batch_size")
        if self.threads is not None and self.threads > MAX_THREADS:  # far more crashes torch's thread pool
            raise ConfigError(f"train.threads must be at most {MAX_THREADS}, got {self.threads}")
        _positive("train", self, "seed", allow_zero=True)
        _seed("train", "seed", self.seed)
        _choice("train", "device", self.device, DEVICES)
        _choice("train", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        weights = self.class_weights
        if isinstance(weights, str) and weights != "balanced":
            raise ConfigError(f'train.class_weights must be a list of weights, one per class, or "balanced", got '
                              f"{weights!r}")
        if isinstance(weights, tuple):
            if not all(math.isfinite(w) and 0 <= w <= FLOAT32_MAX for w in weights) or not any(weights):
                raise ConfigError(f"train.class_weights must be finite numbers of 0 or more, not all 0, got "
                                  f"{list(weights)}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Start from another run's weights and train only some of them (training/finetune.py)."""

    init_from: str | None = None  # a .ckpt file or a run folder (its best.ckpt); not read when resuming
    freeze: tuple[str, ...] = ()  # parameter names, prefixes ("features") or globs ("features.0.*") kept fixed
    unfreeze_at: int | None = None  # train the frozen parameters too from the start of this epoch

    def __post_init__(self) -> None:
        # a pathlib.Path, as data.dir and apply_overrides take one: stored (and written) as text
        if isinstance(self.init_from, os.PathLike):
            object.__setattr__(self, "init_from", os.fspath(self.init_from))
        _typed(self, "finetune")
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("finetune.init_from must be a checkpoint file or run folder, got an empty string")
        if any(not p.strip() for p in self.freeze):
            raise ConfigError(f"finetune.freeze entries must be non-empty patterns, got {list(self.freeze)}")
        if self.unfreeze_at is not None:
            if not self.freeze:
                raise ConfigError("finetune.unfreeze_at needs finetune.freeze: there is nothing to unfreeze")
            if self.unfreeze_at < 2:
                raise ConfigError(
                    f"finetune.unfreeze_at must be 2 or more (the epoch whose start releases the frozen parameters), "
                    f"got {self.unfreeze_at}; to train everything from the start, leave finetune.freeze empty"
                )


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Early stopping: Keras-style patience or Prechelt's GL / PQ / UP criteria."""

    criterion: str = "none"  # none | patience | gl | pq | up
    monitor: str = "val_loss"  # patience: metric to watch
    mode: str = "auto"  # patience: min | max | auto (max for accuracy, else min)
    patience: int = 10  # patience: epochs without improvement before stopping
    min_delta: float = 0.0  # patience: smallest change that counts as improvement
    baseline: float | None = None  # patience: stop if the monitor does not beat this
    start_epoch: int = 1  # epochs before it are ignored (no best value, no count): Keras' start_from_epoch + 1
    # GL: stop when GL > alpha (percent; unset: 5); PQ: when GL/P_k > alpha (unset: 0.5). Unset, each takes a
    # threshold Prechelt tried for it (GL 1 to 5, PQ 0.5 to 3); one shared 5 made PQ PQ_5, past them.
    alpha: float | None = None
    strip: int = 5  # Prechelt's strip length k in epochs (PQ, UP)
    strips: int = 3  # UP: s successive strips of rising validation error
    error: str = "loss"  # what Prechelt's E means: loss (validation/training loss) or error (1 - accuracy)
    divergence_threshold: float | None = None  # stop at once when the monitor is worse than this
    stop_on_nonfinite: bool = True  # stop when the monitored value is NaN or infinite
    restore_best_weights: bool = False  # end with the best epoch's weights, kept as best.ckpt

    def __post_init__(self) -> None:
        _typed(self, "early_stopping")
        _choice("early_stopping", "criterion", self.criterion, STOP_CRITERIA)
        _choice("early_stopping", "monitor", self.monitor, MONITORS)
        _choice("early_stopping", "mode", self.mode, MODES)
        _choice("early_stopping", "error", self.error, ("loss", "error"))
        _positive("early_stopping", self, "patience", "min_delta", "alpha", allow_zero=True)
        _positive("early_stopping", self, "strip", "strips", "start_epoch")
        for key in ("baseline", "divergence_threshold"):  # NaN would never be beaten nor crossed: silently off
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"early_stopping.{key} must be a finite number (or left out), got {value}")


@dataclass(frozen=True)
class ReduceLROnPlateauConfig:
    enabled: bool = False  # multiply the rate by factor when monitor stops improving (callbacks/lr_plateau.py)
    monitor: str = "val_loss"  # the epoch metric to watch (MONITORS)
    mode: str = "auto"  # min | max | auto
    factor: float = 0.1  # new lr = lr * factor
    patience: int = 10  # epochs without improvement before reducing
    threshold: float = 1e-4  # smallest improvement that counts
    threshold_mode: str = "rel"  # rel: relative to the best value; abs: absolute
    cooldown: int = 0  # epochs to wait after a reduction before counting again
    min_lr: float = 0.0  # no reduction goes below this (a decaying schedule still may)

    def __post_init__(self) -> None:
        _typed(self, "reduce_lr")
        _choice("reduce_lr", "monitor", self.monitor, MONITORS)
        _choice("reduce_lr", "mode", self.mode, MODES)
        _choice("reduce_lr", "threshold_mode", self.threshold_mode, ("rel", "abs"))
        if not 0.0 < self.factor < 1.0:
            raise ConfigError(f"reduce_lr.factor must be in (0, 1), got {self.factor}")
        _positive("reduce_lr", self, "patience", "threshold", "cooldown", "min_lr", allow_zero=True)


# The files of a run folder that mnistlab writes under fixed names: no checkpoint template may produce one.
RUN_FILE_NAMES = ("best.ckpt", "last.ckpt", "ema.ckpt", "config.toml", "metrics.csv", "summary.json", "report.html",
                  "test_predictions.npz", "run.lock")
# The folders a run makes in its folder: the report's figures and TensorBoard's events.
RUN_FOLDER_NAMES = ("plots", "tensorboard")


def check_checkpoint_filename(filename: str, run_names: bool = True) -> None:
    """A ConfigError for a ``checkpoint.filename`` template that cannot name a file in the run folder;
    ``run_names``: also for one that gives the name of a file or folder the run writes (the Python API's
    ModelCheckpoint allows those: it adds -v1 to them)."""
    plain = ("must be a plain file name (the files go into the run folder), "
             "e.g. \"epoch{epoch:03d}-{val_accuracy:.4f}.ckpt\"")
    # not printable: NUL, which no file name holds, and the like
    if not filename.strip() or any(c in "/\\" or not c.isprintable() for c in filename) or filename.startswith("."):
        raise ConfigError(f"checkpoint.filename = {filename!r} {plain}")
    # Filled in now with sample metrics, so that a template that cannot be ({val_accuracy:d}: floats take no
    # "d") fails here, not after the first epoch with a half-made run folder. The length is measured with
    # the longest values an epoch plausibly gives (a float's longest repr, 24 characters): {val_loss} of 0.5
    # passed, and 2.0772511230468750 made a name too long after epoch 1. Still longer ones (a diverging
    # loss through "{val_loss:.4f}") are cut where the files are named (callbacks/checkpoint.py).
    try:
        sample = filename.format(**{**{m: 0.5 for m in EPOCH_METRICS}, "epoch": 1})
        longest = filename.format(**{**{m: -2.2250738585072014e-308 for m in EPOCH_METRICS}, "epoch": 100_000})
    except KeyError as e:
        raise ConfigError(f"checkpoint.filename = {filename!r} uses the unknown field {e}; "
                          f"the fields are an epoch's metrics: {', '.join(EPOCH_METRICS)}") from None
    except (ValueError, IndexError, AttributeError, TypeError) as e:
        raise ConfigError(f"checkpoint.filename = {filename!r} cannot be filled with an epoch's metrics "
                          f"({e}); epoch is an integer, the others are floats") from None
    except (MemoryError, OverflowError):  # a width such as {epoch:0>99999999999}
        raise ConfigError(f"checkpoint.filename = {filename!r} makes names far too long") from None
    if any(spec and spec.endswith("c") for _, _, spec, _ in string.Formatter().parse(filename)):
        raise ConfigError(f"checkpoint.filename = {filename!r}: the c conversion makes a character of the "
                          "number (epoch 47 gives \"/\", a folder); use d or f")
    if len(longest.encode()) > MAX_CHECKPOINT_NAME:  # found now, not as "File name too long" after epoch 1
        raise ConfigError(f"checkpoint.filename = {filename[:40]!r}... makes names of up to "
                          f"{len(longest.encode())} bytes; at most {MAX_CHECKPOINT_NAME} (file systems allow 255)")
    if any(c in "/\\" or not c.isprintable() for c in sample) or sample.startswith("."):  # a fill character
        raise ConfigError(f"checkpoint.filename = {filename!r} {plain}")
    if run_names and sample in RUN_FILE_NAMES + RUN_FOLDER_NAMES:
        raise ConfigError(f"checkpoint.filename = {filename!r} is the name of a file or folder the run "
                          f"itself writes ({', '.join(RUN_FILE_NAMES + RUN_FOLDER_NAMES)}); use a template such "
                          "as \"epoch{epoch:03d}-{val_accuracy:.4f}.ckpt\"")


@dataclass(frozen=True)
class CheckpointConfig:
    """best.ckpt and extra checkpoints; last.ckpt (the resume state) is always written."""

    monitor: str = "val_accuracy"  # the epoch metric that ranks checkpoints (best.ckpt, top-k)
    mode: str = "auto"  # min | max | auto
    save_top_k: int = 1  # keep the k best checkpoints (0: none besides best.ckpt)
    every_n_epochs: int = 0  # also keep a checkpoint every n epochs (0: off)
    # Also write last.ckpt every n optimizer steps inside an epoch (0: at epoch ends only): a kill -9 or a power
    # cut then loses at most n steps, not the epoch (Keras' save_freq, Lightning's every_n_train_steps).
    last_every_n_steps: int = 0
    filename: str = "epoch{epoch:03d}-{val_accuracy:.4f}.ckpt"  # template for top-k and periodic files

    def __post_init__(self) -> None:
        _typed(self, "checkpoint")
        _choice("checkpoint", "monitor", self.monitor, MONITORS)
        _choice("checkpoint", "mode", self.mode, MODES)
        _positive("checkpoint", self, "save_top_k", "every_n_epochs", "last_every_n_steps", allow_zero=True)
        check_checkpoint_filename(self.filename)


@dataclass(frozen=True)
class TensorBoardConfig:
    enabled: bool = True
    histograms: bool = True  # histograms of weights and gradients (how often: histogram_every_n_epochs)
    graph: bool = True  # the model graph
    images: bool = True  # sample inputs and misclassified validation images
    # The training loss and learning rate every n optimizer steps, against the step, in tensorboard/steps: the
    # per-epoch points hide the schedule's shape (0: off). The loss is read each step anyway: no extra sync.
    log_every_n_steps: int = 50
    # Histograms at the epochs divisible by n (0: off): they cost seconds per epoch on big models (alexnet ~20 s).
    histogram_every_n_epochs: int = 1

    def __post_init__(self) -> None:
        _typed(self, "tensorboard")
        _positive("tensorboard", self, "log_every_n_steps", "histogram_every_n_epochs", allow_zero=True)


@dataclass(frozen=True)
class AugmentConfig:
    """Random geometric transforms of training batches (data/augment.py); never of validation or test."""

    enabled: bool = False
    rotation: float = 10.0  # degrees, uniform in +-rotation
    scale: float = 0.1  # zoom factor uniform in 1 +- scale
    shift: float = 0.1  # fraction of the image side, uniform in +-shift per axis (drawn before rotation/scale/shear)
    shear: float = 0.0  # degrees, uniform in +-shear
    elastic_alpha: float = 0.0  # elastic distortion strength in pixels (0: off; Simard et al. used ~34 with sigma 4)
    elastic_sigma: float = 4.0  # smoothness of the elastic field in pixels
    # mirror each image left-right with probability 0.5: for Fashion-MNIST (a mirrored shirt is a shirt), not
    # for digits or Kuzushiji characters, where a mirrored one is another symbol or none (a warning says so)
    hflip: bool = False

    def __post_init__(self) -> None:
        _typed(self, "augment")
        _positive("augment", self, "rotation", "shift", "shear", "elastic_alpha", allow_zero=True)
        _positive("augment", self, "elastic_sigma")
        if self.elastic_sigma < MIN_ELASTIC_SIGMA:  # 1e-50 is 0 in float32: the Gaussian's centre was 0/0, NaN images
            raise ConfigError(f"augment.elastic_sigma must be at least {MIN_ELASTIC_SIGMA:g} pixels (a Gaussian "
                              f"that narrow smooths nothing already), got {self.elastic_sigma:g}")
        if not 0.0 <= self.scale < 1.0:
            raise ConfigError(f"augment.scale must be in [0, 1), got {self.scale}")
        for key, bad, limit in (("rotation", self.rotation > 180, "at most 180 (degrees)"),
                                ("shear", self.shear >= 90, "below 90 (degrees)"),
                                ("shift", self.shift > 1, "at most 1 (the whole side)")):
            if bad:
                raise ConfigError(f"augment.{key} must be {limit}, got {getattr(self, key)}")
        if self.elastic_alpha > MAX_ELASTIC_ALPHA:  # far more overflows the float32 field into NaN images
            raise ConfigError(f"augment.elastic_alpha must be at most {MAX_ELASTIC_ALPHA:g} pixels, "
                              f"got {self.elastic_alpha}")


@dataclass(frozen=True)
class MixupConfig:
    """Training on blends of two images with the same blend of their labels (training/mixing.py): each batch
    with a shuffled copy of itself; never validation or test. Off unless an alpha is above 0."""

    # mixup (Zhang et al., 2018): a * images + (1 - a) * the copy's, a drawn per batch from Beta(alpha, alpha);
    # small values keep most batches close to one image (the paper used 0.1-0.4)
    alpha: float = 0.0
    # CutMix (Yun et al., 2019): a box of the copy pasted in, its area a fraction drawn from Beta(cutmix_alpha,
    # cutmix_alpha) of what the model sees (inside model.crop); the paper used 1.0. With both on, each batch is
    # mixed one way or the other, at even odds.
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        _typed(self, "mixup")
        _positive("mixup", self, "alpha", "cutmix_alpha", allow_zero=True)
        for key in ("alpha", "cutmix_alpha"):
            if 0 < getattr(self, key) < MIN_MIX_ALPHA:  # Beta(a, a) below it draws 0 or 1 in float32, or NaN
                raise ConfigError(f"mixup.{key} must be 0 (off) or at least {MIN_MIX_ALPHA:g}, got "
                                  f"{getattr(self, key):g}")
            if getattr(self, key) > MAX_MIX_ALPHA:
                raise ConfigError(f"mixup.{key} must be at most {MAX_MIX_ALPHA:g} (Beta({MAX_MIX_ALPHA:g}, "
                                  f"{MAX_MIX_ALPHA:g}) already draws 0.5 give or take 0.00035), got "
                                  f"{getattr(self, key):.10g}")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class EmaConfig:
    """An exponential moving average of the weights, evaluated and saved as its own model (ema.ckpt)."""

    enabled: bool = False
    decay: float = 0.999  # per step; the average spans about 1 / (1 - decay) steps
    warmup: bool = True  # use min(decay, (1 + step) / (10 + step)): early weights fade out fast

    def __post_init__(self) -> None:
        _typed(self, "ema")
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"ema.decay must be in (0, 1), got {self.decay}")


@dataclass(frozen=True)
class TtaConfig:
    """Test-time augmentation of the final test: average the softmax over small shifts of each image."""

    enabled: bool = False
    shift: int = 1  # pixels: the image itself and shifted by 1..shift left/right/up/down (1 + 4 * shift views)

    def __post_init__(self) -> None:
        _typed(self, "tta")
        _positive("tta", self, "shift")
        if self.shift >= IMAGE_SIDE:  # checked again against the real images when the test runs
            raise ConfigError(f"tta.shift must be below {IMAGE_SIDE} pixels (the images' side), got {self.shift}; "
                              "shifts of 1-3 pixels are the useful ones")


@dataclass(frozen=True)
class Config:
    """Every setting of a run, one section per ``[table]`` of a config file (``Config()``: the defaults, the
    recipe ``mnistlab train`` runs). Frozen: change it with :func:`apply_overrides` (``"section.key=value"``
    strings, as ``--set`` takes them) or ``dataclasses.replace``; read one with :func:`load_config`.

    >>> apply_overrides(Config(), ["train.epochs=3"]).train.epochs
    3
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    reduce_lr: ReduceLROnPlateauConfig = field(default_factory=ReduceLROnPlateauConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    tta: TtaConfig = field(default_factory=TtaConfig)

    def __post_init__(self) -> None:
        for f in fields(self):  # Config(train={...}) was taken as it was, and failed far inside the run
            section = getattr(self, f.name)
            if not isinstance(section, f.default_factory):
                raise ConfigError(f"Config({f.name}=...) takes a {f.default_factory.__name__}, got "
                                  f"{type(section).__name__}: build a config from dicts with config_from_dict, or "
                                  "change keys with apply_overrides")
        if self.schedule.name == "cosine" and self.schedule.min_lr > self.optimizer.lr:
            raise ConfigError(f"schedule.min_lr = {self.schedule.min_lr:g} is above optimizer.lr = "
                              f"{self.optimizer.lr:g}: the cosine schedule would rise to it, not decay")
        if not self.ema.enabled:
            # Only the monitors a run reads: a config that keeps an EMA monitor in an [early_stopping] of another
            # criterion, or in a [reduce_lr] turned off, trains as it would without it.
            read = ("checkpoint", *(("early_stopping",) if self.early_stopping.criterion == "patience" else ()),
                    *(("reduce_lr",) if self.reduce_lr.enabled else ()))
            for section in read:
                monitor = getattr(self, section).monitor
                if monitor in EMA_METRICS:
                    raise ConfigError(f"{section}.monitor = {monitor!r} needs [ema] enabled = true "
                                      "(the average's metrics exist only then)")


# ---------------------------------------------------------------------------
# dict <-> Config with type checks


def check_model_option_types(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as the config would hold them (a NumPy integer a plain int, a list a tuple), or a ConfigError
    for a ``build_model`` option of the wrong type (``kernel_size=2.5``, ``batch_norm="yes"``), by the types
    ``[model]`` has in the config: the Python API gets the config's checks.

    >>> check_model_option_types("cnn", {"kernel_size": 2.5})
    Traceback (most recent call last):
    mnistlab.errors.ConfigError: model 'cnn': kernel_size = 2.5 has the wrong type; expected int
    """
    hints = _section_types(ModelConfig)
    out = dict(options)
    for key, value in options.items():
        if key == "name" or key not in hints or value is None:
            continue
        kinds = [a for a in typing.get_args(hints[key]) if a is not type(None)] or [hints[key]]
        tp = kinds[0] if len(kinds) == 1 else hints[key]
        try:
            out[key] = _coerce(value, tp, key)
        except ConfigError as e:
            raise ConfigError(f"model {model!r}: {e}") from None
    return out


@functools.cache
def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _typed(section: Any, name: str) -> None:
    """Check each key of a section against its annotation, as a config file's are (``_coerce``), and store
    lists as tuples and whole numbers of float keys as floats: the Python API builds sections directly, and
    ``epochs=True`` or ``lr="0.1"`` trained, or failed, far from the cause (a config.toml that cannot be read
    back, a bare TypeError)."""
    for key, tp in _section_types(type(section)).items():
        value = getattr(section, key)
        checked = _coerce(value, tp, f"{name}.{key}")
        if checked is not value:
            object.__setattr__(section, key, checked)


def _type_name(tp: Any) -> str:
    """A field's type in the words of its messages: Python's spelling was "tuple[Union[int, str], ...] | None".

    >>> _type_name(float | None), _type_name(tuple[int | str, ...] | None), _type_name(tuple[float, float])
    ('float or none', 'a list of int or str, or none', 'a list of 2 values (float, float)')
    """
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        text = " or ".join(_type_name(a) for a in kinds)
        if type(None) not in args:
            return text
        return f"{text}{',' if any(typing.get_origin(a) is tuple for a in kinds) else ''} or none"
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def _wrong_type(key: str, value: Any, expected: str, list_expected: bool = False) -> ConfigError:
    message = f"{key} = {value!r} has the wrong type; expected {expected}"
    inner = value.strip() if isinstance(value, str) else ""
    if inner[:1] == "(" and inner[-1:] == ")":  # Python's tuple, (0.9, 0.99): its items, not "(0.9" and "0.99)"
        inner = inner[1:-1]
    if list_expected and inner and not inner.startswith("["):
        # `--set model.channels=16,32` or `--set finetune.freeze=features` (as --freeze takes it): the values
        # without the brackets that make a TOML list, separated by commas or spaces
        items = [v for v in re.split(r"[,\s]+", inner) if v]
        shown = ", ".join(_list_item(v) for v in items)
        return ConfigError(f"{message}; a list is written in brackets: --set '{key}=[{shown}]'")
    if isinstance(value, str) and value.lstrip().startswith("["):
        # `--set model.channels=[8,"M"]` reaches us as [8,M]: the shell took the quotes, the list did not parse
        quoted = re.sub(r'(?<=[\[,\s])([A-Za-z_][\w.-]*)(?=\s*[,\]])', r'"\1"', value)
        try:
            tomllib.loads(f"v = {quoted}")
        except tomllib.TOMLDecodeError:
            return ConfigError(f"{message}; it was read as text, not a list")
        return ConfigError(f"{message}; words in a list need double quotes, which the shell removes unless the "
                           f"argument is in single quotes: --set '{key}={quoted}'")
    return ConfigError(message)


def _list_item(text: str) -> str:
    """One item of a list typed without its brackets, as a TOML list holds it: a number or true/false as typed
    (a pattern of digits and e's took the parameter name "e" for a number), text in double quotes, once: the
    quoted "M" of `--set 'model.channels=32,"M",64'` was shown as "\\"M\\"", which the config refused.

    >>> [_list_item(t) for t in ("32", "e", '"M"', "'features'", "2024-01-01")]
    ['32', '"e"', '"M"', '"features"', '"2024-01-01"']
    """
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return json.dumps(text)
    if isinstance(value, (int, float, bool)):
        return text
    return json.dumps(value if isinstance(value, str) else text)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _BadValue:
                raise  # the right type, a value it cannot hold: that is the message, not "wrong type"
            except ConfigError:
                pass
        raise _wrong_type(key, value, _type_name(tp) + (" (true or false)" if bool in args else ""),
                          list_expected=any(typing.get_origin(a) is tuple for a in args))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(key, value, _type_name(tp), list_expected=True)
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key} needs {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        # numbers.Integral: NumPy's integers too (a seed from np.arange), stored as int: config.toml writes repr()
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = operator.index(value)
            if abs(value) > 2**64:  # past every field's sense (seeds go to 2**64 - 1); float maths would overflow
                raise _BadValue(f"{key} = {_digits(value)} is too large (at most 2**64)")
            return value
    elif tp is float:
        # numbers.Real: np.float32 and NumPy's integers too (np.float64 is a float already), stored as float
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of hundreds of digits
                raise _BadValue(f"{key} = {_digits(value)} is too large for a number (at most about 1.8e308)") from None
    elif tp is str:
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:  # a path's bytes that are not UTF-8, as Python passes them on
                shown = value.encode(errors="surrogateescape").decode(errors="backslashreplace")
                raise _BadValue(f"{key} = '{shown}' is not UTF-8 text, which config.toml and the checkpoints "
                                  "store: rename the file or folder") from None
            return value
    raise ConfigError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}"
                      f"{' (true or false)' if tp is bool else ''}")


class _BadValue(ConfigError):
    """A value of the right type that the field cannot hold: a number too large, text that is not UTF-8."""


def _digits(n: int) -> str:
    """
    >>> _digits(12), _digits(10**40)
    ('12', '100000000000... (41 digits)')
    """
    text = str(n)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts (as read from TOML), rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a table of sections, got {type(data).__name__}")
    sections = {f.name: f for f in fields(Config)}
    # key=str: a dict from elsewhere than TOML (a crafted checkpoint) may have non-string keys
    unknown = sorted(set(data) - set(sections), key=str)
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(map(str, unknown))}; valid sections: {', '.join(sections)}")
    built = {}
    hints = _section_types(Config)
    for name, value in data.items():
        cls = hints[name]
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {value!r}")
        types_ = _section_types(cls)
        bad = sorted(set(value) - set(types_), key=str)
        if bad:
            raise ConfigError(
                f"unknown key(s) {', '.join(f'{name}.{k}' for k in bad)}; valid keys in [{name}]: {', '.join(types_)}"
            )
        built[name] = cls(**value)  # each section checks its keys' types (_typed)
    return Config(**built)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dicts of the config (tuples become lists; None values are kept)."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {
        f.name: {k.name: plain(getattr(getattr(cfg, f.name), k.name)) for k in fields(getattr(cfg, f.name))}
        for f in fields(cfg)
    }


def load_config(path: str | Path) -> Config:
    """Read a TOML config file; missing sections and keys keep their defaults."""
    if not isinstance(path, (str, os.PathLike)):  # load_config(Config()) was a TypeError from inside pathlib
        raise TypeError(f"load_config() takes a TOML file's path, got {type(path).__name__}")
    path = expand_home(Path(path), "config file", ConfigError)  # as data.dir's ~ is the home folder
    if path.is_dir():  # `--config runs/NAME`: "[Errno 21] Is a directory" said nothing of what was wanted
        inside = path / "config.toml"
        hint = f"; a run folder's settings are in {inside}" if inside.is_file() else ""
        raise ConfigError(f"config file {path} is a folder, not a TOML file{hint}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some Windows editors add one) is skipped
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as e:  # `--config seven.png`: Python's "'utf-8' codec can't decode byte 0x89 ..."
        raise ConfigError(f"config file {path} is not a text file (byte {e.start} is not UTF-8): a config is TOML "
                          "text, such as configs/fast.toml") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name (Python API)
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if "sweep" in data:  # a sweep file's base would silently train one trial's worth of nothing in particular
        raise ConfigError(f"{path} is a sweep file (it has a [sweep] table); run it with "
                          f"`mnistlab sweep {shell_path(path)}`, or train its result, the best.toml the sweep writes")
    optimizer = data.get("optimizer")
    if (isinstance(optimizer, dict) and _OLD_WRITTEN_OPTIMIZER <= set(optimizer)
            and optimizer.get("name") in ("sgd", "adam", "adamw")):
        # A run's config.toml (or a sweep's best.toml) that an older mnistlab wrote, with every key of its
        # [optimizer]: read as --resume reads the same config from the checkpoint, so that training it again does
        # not warn that Adam does not read the momentum 0.9 that mnistlab itself stored. For these optimizers
        # (those of that time) unset momentum and eps train with the same values; RMSprop's unset momentum is 0.
        data = stored_before_own_defaults(data)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# The [optimizer] table mnistlab wrote into each run's config.toml before unset keys meant each optimizer's own
# default (see stored_before_own_defaults): every key, momentum and eps included.
_OLD_WRITTEN_OPTIMIZER = {"name", "lr", "momentum", "nesterov", "betas", "eps"}


def _parse_value(text: str) -> Any:
    """A --set value is read as a TOML value (3, 0.1, true, [32, "M"]); anything else is a string."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        if text.lower() in ("none", "null"):
            return None
        return text
    # A value with a line break can hold more TOML: "3\nx = 4" was read as 3, the rest dropped unseen. As text,
    # it is refused by any key that is not text.
    return parsed["v"] if parsed.keys() == {"v"} else text


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``section.key=value`` overrides (or a ``{"section.key": value}`` dict).

    A value of ``none`` resets an optional key to ``None``. The overrides apply
    together: each section is checked once, with all its new values, so keys
    that only make sense together (``finetune.freeze`` and
    ``finetune.unfreeze_at``) may come in any order. A key given twice keeps
    its last value.
    """
    if not isinstance(cfg, Config):  # cfg.train, or a file's path: "'TrainConfig' object has no attribute 'train'"
        raise TypeError(f"apply_overrides() takes the whole Config (Config(), load_config(path)), got "
                        f"{type(cfg).__name__}")
    if overrides is None:  # "'NoneType' object is not iterable"
        raise ConfigError("overrides must be a list of 'section.key=value' strings (or a dict), got None")
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    items, texts = list(overrides.items()), getattr(overrides, "texts", {})
    hints = _section_types(Config)
    changes: dict[str, dict[str, Any]] = {}
    for dotted, value in items:
        if not isinstance(dotted, str):
            raise ConfigError(f"override key {dotted!r} must be a string like 'section.key'")
        if isinstance(value, os.PathLike):  # a pathlib.Path for data.dir or finetune.init_from, from Python
            value = os.fspath(value)
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(
                f"override {dotted!r} must look like section.key=value; valid sections: {', '.join(hints)}"
            )
        if section not in hints:  # it has the shape: "must look like section.key" said nothing of what was wrong
            raise ConfigError(f"unknown section {section!r} in override {dotted!r}; valid sections: {', '.join(hints)}")
        cls = hints[section]
        types_ = _section_types(cls)
        if key not in types_:
            raise ConfigError(f"unknown key {dotted!r}; valid keys in [{section}]: {', '.join(types_)}")
        if value is None and types_[key] is str:  # the bare word none, for a string key that has it as a choice
            value = "none"  # (early_stopping.criterion); any other string key refuses it as a choice
        if dotted in texts and value == texts[dotted] and _holds_list(types_[key]):
            # A list TOML refused for a float written .5, read here before a key that takes text as well took
            # the brackets as its text (train.class_weights=[1,.5] was "got '[1,.5]'")
            loose = _loose_list(value)
            value = value if loose is None else loose
        try:
            value = _coerce(value, types_[key], dotted)
        except ConfigError:
            if dotted not in texts:  # a value from Python, not the command line's text: no second reading
                raise
            if value == texts[dotted]:  # text TOML could not read: .5 and True are still plainly a float, a bool
                loose = _loose_value(value, types_[key])
                if loose is None:
                    raise
                value = _coerce(loose, types_[key], dotted)
            elif not isinstance(value, str) and _takes_text(types_[key]):
                # A text key given a word TOML reads as something else (data.dir=2024, a date, true): the text as
                # typed.
                value = texts[dotted]
            else:
                raise
        changes.setdefault(section, {})[key] = value
    return replace(cfg, **{section: replace(getattr(cfg, section), **kv) for section, kv in changes.items()})


def _loose_value(text: str, tp: Any) -> Any:
    """A ``--set`` value that TOML refuses but that is one value of ``tp`` beyond doubt, else None: a float as
    Python and the flags read it (``--lr .5`` worked, ``--set optimizer.lr=.5`` was "the wrong type"), also in
    a list (_loose_list, which apply_overrides tries first), an integer with leading zeros as the flags read it
    (``--epochs 03``), a bool in any case (``True``, Python's). Words such as yes or 1 stay errors: true or false
    is asked for.

    >>> [_loose_value(text, tp) for text, tp in ((".5", float), ("-5.", float | None), ("True", bool), ("yes", bool))]
    [0.5, -5.0, True, None]
    >>> _loose_value("03", int)
    3
    """
    kinds = _kinds(tp)
    if bool in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if int in kinds and re.fullmatch(r"[+-]?\d+", text):  # TOML refuses leading zeros; the flags take them
        return int(text)
    if float in kinds:
        try:
            return float(text)
        except ValueError:
            pass
    return None


def _loose_list(text: str) -> list[Any] | None:
    """A list TOML refuses for a float written as Python and the flags take it (``[.9, .99]``, read as text,
    not a list), with each such float given its leading 0; else None. Not where quotes hold text items, whose
    dots would change too.

    >>> _loose_list("[.9, -.99]"), _loose_list('[.5, "M"]')
    ([0.9, -0.99], None)
    """
    if not text.startswith("[") or any(q in text for q in "\"'"):
        return None
    try:
        value = tomllib.loads("v = " + re.sub(r"(?<![\w.])([+-]?)\.(?=\d)", r"\g<1>0.", text))["v"]
    except tomllib.TOMLDecodeError:
        return None
    return value if isinstance(value, list) else None


def _holds_list(tp: Any) -> bool:
    """Whether ``tp`` (a config key's type) takes a list: a tuple, alone or in a union."""
    return any(typing.get_origin(k) in (tuple, list) for k in _kinds(tp))


def _takes_text(tp: Any) -> bool:
    return str in _kinds(tp)


def _kinds(tp: Any) -> tuple[Any, ...]:
    """The types a config key's type admits: a union's members, else the type alone."""
    return typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)


class Overrides(dict):
    """:func:`parse_overrides`' values, with the text each was read from (``texts``), for :func:`apply_overrides`."""

    def __init__(self, values: Any = (), texts: dict[str, str] | None = None) -> None:
        super().__init__(values)
        self.texts = dict(texts or {})


def parse_overrides(texts: Iterable[str]) -> Overrides:
    """``section.key=value`` strings as a ``{"section.key": value}`` dict (values parsed as TOML; a later key wins).

    The text of each value is kept too: a key whose type is text takes it as typed, where TOML would
    read a number or a date (``data.dir=2024``).

    >>> parse_overrides(["train.epochs=3", "model.channels=[8, 16]", "train.epochs=4"])
    {'train.epochs': 4, 'model.channels': [8, 16]}
    """
    if isinstance(texts, str):  # one override, not in a list: its characters were "override 't' must look like..."
        raise ConfigError(f"overrides must be a list of 'section.key=value' strings (or a dict), got the text "
                          f"{texts!r}; put it in a list: [{texts!r}]")
    out = Overrides()
    for text in texts:
        if not isinstance(text, str):  # ("train.epochs", 3) was an AttributeError
            raise ConfigError(f"override {text!r} must be a string like 'section.key=value' (e.g. "
                              "train.batch_size=128), or give a dict {'section.key': value}")
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.batch_size=128)")
        out[key.strip()] = _parse_value(value.strip())
        out.texts[key.strip()] = value.strip()
    return out


# TOML basic strings: the quote, the backslash and the control characters (but tab) must be escaped.
_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _is_control(c: str) -> bool:
    return (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if _is_control(c) else c) for c in v) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def config_to_toml(cfg: Config) -> str:
    """The config as TOML text; keys set to None (model defaults) are written as comments, an optimizer key
    with the value the optimizer takes for it."""
    own = OPTIMIZER_DEFAULTS[cfg.optimizer.name]  # what an unset optimizer key trains with: worth recording
    lines: list[str] = []
    for section, values in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
            elif section == "optimizer" and key in own:
                lines.append(f"# {key} = (default: {_toml_value(own[key])}, {cfg.optimizer.name}'s)")
            else:
                lines.append(f"# {key} = (default)")
        lines.append("")
    return "\n".join(lines)


def diff_from_default(cfg: Config) -> dict[str, Any]:
    """``section.key -> value`` for every key that differs from the defaults."""
    base, mine = config_to_dict(Config()), config_to_dict(cfg)
    return {
        f"{s}.{k}": v for s in mine for k, v in mine[s].items() if base[s][k] != v
    }


__all__ = [
    "Config",
    "ModelConfig",
    "DataConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "FinetuneConfig",
    "EarlyStoppingConfig",
    "ReduceLROnPlateauConfig",
    "CheckpointConfig",
    "TensorBoardConfig",
    "load_config",
    "apply_overrides",
    "parse_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_toml",
    "diff_from_default",
]
