"""The learning-rate range test (Smith 2017; fastai's and Lightning's ``lr_find``): which rate to train with.

From the weights ``mnistlab train`` would start from, the learning rate grows
exponentially from ``min_lr`` to ``max_lr`` over ``steps`` steps of the real
:class:`~mnistlab.training.fit.Trainer` (the config's model, optimizer, batch size,
augmentation, label smoothing and precision: the step that training will take),
and each step's loss is recorded. The loss stays flat while the rate is too small
to learn, falls, then climbs once the rate is too large; the test stops there,
when the smoothed loss passes ``diverge`` times its lowest value or a loss is not
finite, since the rest would only cost time (and before a rate above float32's
largest number, which the weights cannot take).

The suggestion is the rate at which the smoothed loss falls fastest against
log(lr), as Lightning suggests (skipping the first 10 steps, whose average is
still settling, and the last), but only on the way down to the lowest value: a
net that too large a rate broke can drift down again, and that dip is no rate
to train at. Nor does a fall no larger than the losses' own noise: on a flat
curve (rates too small to train) the average wanders by chance, and its
steepest point is no rate either. The rate of the lowest smoothed loss is
reported too, an upper bound. The config's schedule is ignored (the test sets
every step's rate), and nothing is written to disk.

>>> result = lr_range_test(Config())     # the default recipe        # doctest: +SKIP
>>> f"{result.suggestion:.1e}"           # benchmarks/lr_find.txt     # doctest: +SKIP
'1.0e-02'
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..callbacks import Callback
from ..config import FLOAT32_MAX, Config, apply_overrides
from ..data import DataBundle, load_data, num_batches
from ..errors import ConfigError
from ..models import model_options
from .finetune import read_init_checkpoint
from .fit import Trainer, resolve_device
from .run import config_model, load_init, process_state_kept

# Lightning's and fastai's defaults: an average over the last ~50 steps, a 4x rise ends the test.
BETA = 0.98
SKIP_BEGIN, SKIP_END = 10, 1
MIN_STEPS = SKIP_BEGIN + SKIP_END + 3  # for a suggestion: a slope needs 3 points between the skipped ones
MAX_STEPS = 100_000  # the planned rates are a list; a range test needs hundreds of steps at most
# A descent counts when the average falls by more than this many times the losses' step-to-step noise
# (batch_noise). On flat curves of Gaussian noise (simulated, 30 to 300 steps) the fall to the lowest point after
# the settling start reached 1.3x the noise at most; a real 30-step test of a small cnn, whose average lags the
# loss's fall, showed 2.8x, and the full tests far more.
NOISE_FALLS = 2.0


@dataclass
class RangeTest:
    lrs: list[float]  # the rate of each step taken, as the trainer applied it
    losses: list[float]  # each step's training loss
    smoothed: list[float]  # their bias-corrected exponential moving average
    suggestion: float | None  # steepest descent of the smoothed loss; None when too few steps ran or it never fell
    lowest: float | None  # the rate of the lowest smoothed loss
    stop_reason: str
    precision: str = "fp32"  # train.precision as resolved: the step's precision, as training will take it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def why_no_suggestion(self, planned_steps: int) -> str | None:
        """Why :attr:`suggestion` is None, and what to change (``lr-find``'s flags); None where there is one.

        ``planned_steps`` is the ``steps`` the test was asked for: fewer may have run.
        """
        if self.suggestion is not None:
            return None
        s = self.smoothed
        if not self.lrs:  # the first loss is the untrained model's, before any update: no rate made it overflow
            return ("the loss (or its gradients) was not finite at the first step, before any update, so no learning "
                    "rate can change it; look at what overflows: train.class_weights, train.precision, "
                    "finetune.init_from's weights or the data")
        if planned_steps < MIN_STEPS:  # every planned step ran: "lower --min-lr" would change nothing
            return (f"--steps {planned_steps} is fewer than the {MIN_STEPS} steps a suggestion needs (the first "
                    f"{SKIP_BEGIN} are skipped while the average settles); raise --steps")
        if len(self.lrs) < MIN_STEPS:
            return f"only {len(self.lrs)} steps ran (it needs {MIN_STEPS}); lower --min-lr or raise --steps"
        # A curve that did not fall: the rates were too small, where the test reached --max-lr; where a rate broke
        # the step first (a loss not finite, one past float32), a larger --max-lr would break it sooner.
        advice = (f"up to {self.lrs[-1]:.1e} the rates are too small to train in these steps; raise --max-lr"
                  if self.stop_reason.startswith("reached max_lr") else "no rate before those that broke it "
                  "trained it; raise --steps, so that the rates rise more slowly (weights that start trained, "
                  "from --init-from, may have nothing left to learn at any rate)")
        if min(s) > 0.99 * s[0] and max(s) < 1.05 * s[0]:
            # Neither fell nor rose: the rates were too small to move the weights in these steps (the lowest
            # average then lands on an early step by noise, and "lower --max-lr" would be wrong advice).
            return (f"the average loss hardly changed ({s[0]:.4f} at the start, {min(s):.4f} at its lowest, "
                    f"{s[-1]:.4f} at the end): {advice}")
        lowest_step = int(np.argmin(s)) + 1
        if lowest_step > SKIP_BEGIN + 2:
            # Late enough for a slope (steepest_descent's 3 points), but the fall to it was the batches' noise:
            # a flat curve's chance wander.
            fall, noise = descent(s, self.losses)
            return (f"the average loss fell by {fall:.4f} to its lowest ({min(s):.4f}, at lr {self.lowest:.1e}), "
                    f"no more than {NOISE_FALLS:g}x the noise of the batches' losses ({noise:.4f}): {advice}")
        # The one way left: the lowest average came so early that under 3 steps lie between the skipped ones and
        # it (a loss still falling at the end gives a suggestion).
        return (f"the average loss was lowest at step {lowest_step}, too early to see it fall after the first "
                f"{SKIP_BEGIN} steps (skipped while the average settles); lower --max-lr or raise --steps, so that "
                "the rates rise more slowly")


def geometric_rates(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """``steps`` rates from ``min_lr`` to ``max_lr``, each the same factor above the one before.

    >>> [f"{r:g}" for r in geometric_rates(1e-3, 1.0, 4)]
    ['0.001', '0.01', '0.1', '1']
    """
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


class MovingAverage:
    """Exponential moving average with Adam's bias correction, so the first values are not pulled to 0."""

    def __init__(self, beta: float = BETA) -> None:
        self.beta, self._avg, self._count = beta, 0.0, 0

    def add(self, value: float) -> float:
        """Take in the next value; returns the average so far."""
        self._count += 1
        self._avg = self.beta * self._avg + (1 - self.beta) * value
        return self._avg / (1 - self.beta ** self._count)


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """The :class:`MovingAverage` after each of ``losses``.

    >>> smooth([2.0, 2.0, 2.0], beta=0.9)
    [2.0, 2.0, 2.0]
    """
    average = MovingAverage(beta)
    return [average.add(loss) for loss in losses]


def batch_noise(losses: Sequence[float]) -> float:
    """How much one step's loss scatters around the curve: the standard deviation of Gaussian noise, estimated
    from the differences of neighbouring losses (a smooth trend changes them little) by their median (a few
    jumps do not move it). 0 for fewer than two losses.

    >>> round(batch_noise([2.30, 2.32, 2.30, 2.32, 2.30]), 3)
    0.021
    """
    steps = np.abs(np.diff(np.asarray(losses, dtype=np.float64)))
    # the median of |x - y| for two draws of a normal distribution is 0.954 of its standard deviation
    return float(np.median(steps)) / 0.954 if len(steps) else 0.0


def descent(smoothed: Sequence[float], losses: Sequence[float], skip_begin: int = SKIP_BEGIN) -> tuple[float, float]:
    """How far ``smoothed`` fell on its way to its lowest point, from its highest value after the ``skip_begin``
    settling steps, and the :func:`batch_noise` of the ``losses`` up to that point.

    >>> [round(x, 3) for x in descent([2.3, 2.3, 2.0, 1.5, 1.6], [2.3, 2.3, 1.7, 1.0, 2.0], skip_begin=1)]
    [0.8, 0.629]
    """
    end = int(np.argmin(smoothed)) + 1 if len(smoothed) else 0
    fall = max(smoothed[skip_begin:end]) - smoothed[end - 1] if end > skip_begin else 0.0
    return float(fall), batch_noise(losses[:end])


def steepest_descent(lrs: Sequence[float], smoothed: Sequence[float], skip_begin: int = SKIP_BEGIN,
                     skip_end: int = SKIP_END, losses: Sequence[float] | None = None) -> float | None:
    """The rate where ``smoothed`` falls fastest per step (the rates are evenly spaced in log) on its way down
    to its lowest value, or None when that stretch has fewer than 3 points, or when ``losses`` (the values
    smoothed) are given and the fall is no more than ``NOISE_FALLS`` times their noise (:func:`descent`).

    Only the descent before the lowest point counts: past it the rate is too large, and a net that
    the large rates broke can wander down again by chance (a dip after the climb is no rate to train at).

    >>> steepest_descent([1, 2, 3, 4, 5, 6], [5.0, 4.9, 4.0, 2.0, 1.9, 1.8], skip_begin=0, skip_end=0)
    3
    """
    if not smoothed:  # a loss not finite at the first step ends the test before any step is recorded
        return None
    stop = len(smoothed) - skip_end
    end = min(stop, int(np.argmin(smoothed)) + 1)
    if end - skip_begin < 3:
        return None
    if losses is not None:
        fall, noise = descent(smoothed, losses, skip_begin)
        if fall <= NOISE_FALLS * noise:  # a flat curve's chance wander: its steepest point is no rate to train at
            return None
    # The slope over the whole kept curve, then the steepest point up to the lowest: cut at the lowest point
    # first, np.gradient took a one-sided difference there, and the lowest point could come out steepest.
    slope = np.gradient(np.asarray(smoothed[skip_begin:stop], dtype=np.float64))
    return lrs[skip_begin + int(np.argmin(slope[: end - skip_begin]))]


class _Ended(Exception):
    """Raised by the range callback to leave ``fit()`` mid-epoch (the Trainer acts on request_stop only at
    epoch ends, where checkpoints and resume are exact; this test keeps nothing, so it may end anywhere)."""


class _RangeCallback(Callback):
    def __init__(self, rates: list[float], diverge: float, beta: float) -> None:
        self.rates, self.diverge = rates, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self._average = MovingAverage(beta)
        self._lowest = math.inf  # of the smoothed losses

    def on_batch_begin(self, step: int, trainer) -> None:
        rate = self.rates[step]  # ``step`` steps are done: this is the rate of the next one
        if rate > FLOAT32_MAX:
            # The trainer applies it as inf (float32 weights take no larger factor): the step ran at lr inf, which
            # --json wrote as null, and so was the lowest average's rate where that step had it.
            raise _Ended(f"the next rate, {rate:.2e} (step {step + 1} of {len(self.rates)}), is above float32's "
                         f"largest number ({FLOAT32_MAX:.2e}), which the weights cannot take")
        trainer.set_lr(rate)

    def on_batch_end(self, step: int, metrics: dict[str, float], trainer) -> None:
        self.lrs.append(metrics["lr"])
        self.losses.append(metrics["loss"])
        self.smoothed.append(self._average.add(metrics["loss"]))
        self._lowest = min(self._lowest, self.smoothed[-1])
        if self.smoothed[-1] > self.diverge * self._lowest:
            raise _Ended(f"the smoothed loss passed {self.diverge:g}x its lowest value at lr {self.lrs[-1]:.2e} "
                         f"(step {step} of {len(self.rates)})")
        if step == len(self.rates):
            raise _Ended(f"reached max_lr {self.rates[-1]:.2e} after {step} steps")


def check_settings(min_lr: float, max_lr: float, steps: int, diverge: float = 4.0, beta: float = BETA) -> None:
    """ConfigError unless 0 < min_lr < max_lr (finite, with a finite ratio; min_lr no more than float32's largest
    number), steps is a whole number with 2 <= steps <= MAX_STEPS, diverge > 1 (finite) and 0 <= beta < 1."""
    if not 0 < min_lr < max_lr or not math.isfinite(max_lr):
        raise ConfigError(f"the range test needs 0 < min_lr < max_lr, got min_lr={min_lr:g}, max_lr={max_lr:g}")
    if not math.isfinite(max_lr / min_lr):  # the rates grow by (max/min)^(1/steps): beyond floats, they become inf
        raise ConfigError(f"max_lr / min_lr is too large to compute ({max_lr:g} / {min_lr:g}); "
                          "a range such as 1e-7 to 10 covers every useful rate")
    if min_lr > FLOAT32_MAX:  # no step could run (see _RangeCallback)
        raise ConfigError(f"min_lr must be at most {FLOAT32_MAX:.3g} (float32's largest number: the step cannot "
                          f"apply a larger rate to the weights), got {min_lr:g}; a range such as 1e-7 to 10 covers "
                          "every useful rate")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):  # 50.0 failed in range() as a TypeError
        raise ConfigError(f"the range test's steps must be a whole number, got {steps!r}")
    if not 2 <= steps <= MAX_STEPS:
        raise ConfigError(f"the range test needs 2 to {MAX_STEPS:,} steps, got {steps}")
    if not 1 < diverge < math.inf:  # NaN or inf would never stop the test
        raise ConfigError(f"diverge must be a finite number above 1 (a factor over the lowest loss), got {diverge:g}")
    if not 0 <= beta < 1:  # the average's weight of the past: 1 divides by zero, NaN makes every value NaN
        raise ConfigError(f"beta must be in [0, 1) (the smoothing's weight of the past), got {beta:g}")


def lr_range_test(
    cfg: Config,
    *,
    data: DataBundle | None = None,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
    beta: float = BETA,
) -> RangeTest:
    """Run the range test for ``cfg`` (see the module docstring); ``data`` defaults to ``cfg.data`` loaded.

    Like ``train``, it puts back torch's global random state and thread count when it ends.
    """
    check_settings(min_lr, max_lr, steps, diverge, beta)
    model_options(cfg.model.name)  # an unknown model fails before the data is read (or downloaded)
    with process_state_kept():  # the caller's random stream and thread count come back, as after train()
        return _range_test(cfg, data, min_lr, max_lr, steps, diverge, beta)


def _range_test(cfg: Config, data: DataBundle | None, min_lr: float, max_lr: float, steps: int, diverge: float,
                beta: float) -> RangeTest:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    init = None if cfg.finetune.init_from is None else read_init_checkpoint(cfg.finetune.init_from)
    torch.manual_seed(cfg.train.seed)  # as `train` does, so the test starts from the weights training starts from
    if data is None:
        data = load_data(cfg.data, device=device)
    model = config_model(cfg, data)
    if init is not None:
        load_init(model, cfg, data, init)
    # The schedule would scale the rates the test sets; the weight average would only cost time.
    epochs = math.ceil(steps / num_batches(len(data.train), cfg.train.batch_size, min_last=2))  # as Trainer counts
    # finetune.unfreeze_at would release the frozen layers partway, at a step set by the data's size: the test
    # trains the parameters --freeze leaves trainable throughout. The test takes its own --steps, not train.max_steps.
    cfg = apply_overrides(cfg, {"schedule.name": "constant", "schedule.warmup_epochs": 0, "ema.enabled": False,
                                "train.epochs": epochs, "train.max_steps": None,
                                "finetune.unfreeze_at": None})
    probe = _RangeCallback(geometric_rates(min_lr, max_lr, steps), diverge, beta)
    trainer = Trainer(model, data, cfg, callbacks=[probe], device=device)
    try:
        fit = trainer.fit()
        reason = fit.stop_reason  # a non-finite loss ends fit() before the callback sees it
        if fit.stopped_by == "non_finite_loss" and fit.stop_reason.startswith("non-finite validation loss"):
            # the epoch's steps all ran; its last one left weights whose outputs are not finite
            step = len(probe.losses)
            reason = (f"the validation loss was not finite after step {step} (lr {probe.rates[step - 1]:.2e}): "
                      "that step's update made the outputs overflow")
        elif fit.stopped_by == "non_finite_loss":
            step = len(probe.losses) + 1
            what = "the gradients were" if fit.stop_reason.startswith("non-finite gradients") else "the loss was"
            reason = f"{what} not finite at lr {probe.rates[step - 1]:.2e} (step {step})"
    except _Ended as e:
        reason = str(e)
    s = probe.smoothed
    return RangeTest(
        lrs=probe.lrs,
        losses=probe.losses,
        smoothed=s,
        suggestion=steepest_descent(probe.lrs, s, losses=probe.losses),
        lowest=probe.lrs[int(np.argmin(s))] if s else None,
        stop_reason=reason,
        precision=trainer.precision,
    )


__all__ = ["MIN_STEPS", "NOISE_FALLS", "MovingAverage", "RangeTest", "batch_noise", "check_settings", "descent",
           "geometric_rates", "lr_range_test", "smooth", "steepest_descent"]
