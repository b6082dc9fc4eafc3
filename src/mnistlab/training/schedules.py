"""Learning-rate schedules as pure functions of the step (easy to plot and to test).

>>> from mnistlab.config import ScheduleConfig
>>> lr_at(0, total_steps=100, steps_per_epoch=10, base_lr=0.1, cfg=ScheduleConfig(name="constant"))
0.1
"""

from __future__ import annotations

import bisect
import math

from ..config import ScheduleConfig, unread_settings


def _cos_interp(start: float, end: float, frac: float) -> float:
    """Cosine interpolation from ``start`` (frac=0) to ``end`` (frac=1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def warmup_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> int:
    """The steps of the linear warm-up (constant, step, multistep, cosine): ``warmup_epochs`` of
    ``steps_per_epoch``, rounded. A resume that changes the epoch's length checks by it too (fit.py)."""
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def lr_at(step: int, *, total_steps: int, steps_per_epoch: int, base_lr: float, cfg: ScheduleConfig,
          epoch: int | None = None) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of a run of ``total_steps``.

    - constant: ``base_lr`` (after an optional linear warm-up);
    - step: ``base_lr * gamma ** (epoch // step_epochs)``;
    - multistep: ``base_lr * gamma ** (the milestones that epochs done have reached)``;
    - cosine: from ``base_lr`` down to ``min_lr`` over the run;
    - onecycle: as PyTorch's OneCycleLR with cosine annealing: from
      ``base_lr / div_factor`` up to ``base_lr`` over the first ``pct_start`` of the
      steps, then down to ``base_lr / div_factor / final_div_factor``.

    ``epoch``: the epochs done before this step (step and multistep count them); unset, ``step // steps_per_epoch``,
    which an epoch cut short by ``train.max_steps`` and resumed puts behind.
    """
    total_steps = max(total_steps, 1)
    if cfg.name == "onecycle":
        start = base_lr / cfg.div_factor
        end = start / cfg.final_div_factor
        # The spans are PyTorch's, fractions of a step included: rounded up to a whole step, they kept the last
        # step of a short fall (8 steps, pct_start 0.9) at 96x its end rate. A fall always spans more than 0
        # (step > peak_step); a rise of 0 steps (peak at step 0, where PyTorch divides by zero) is the peak.
        peak_step = cfg.pct_start * total_steps - 1
        if step <= peak_step:
            return _cos_interp(start, base_lr, step / peak_step if peak_step > 0 else 1.0)
        return _cos_interp(base_lr, end, (step - peak_step) / (total_steps - 1 - peak_step))

    warmup = warmup_steps(cfg, steps_per_epoch)
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if cfg.name == "constant":
        return base_lr
    if cfg.name in ("step", "multistep"):
        if epoch is None:  # epochs done, as PyTorch's StepLR and MultiStepLR count them
            epoch = step // steps_per_epoch
        drops = epoch // cfg.step_epochs if cfg.name == "step" else bisect.bisect_right(cfg.milestones, epoch)
        try:
            return base_lr * cfg.gamma ** drops
        except OverflowError:  # a gamma above 1 past float range: the rate is infinite, and the run's
            return math.inf  # non-finite loss check stops it (Python's power raised, mid-run, as a traceback)
    if cfg.name == "cosine":
        frac = (step - warmup) / max(total_steps - warmup - 1, 1)
        return _cos_interp(base_lr, cfg.min_lr, frac)
    raise ValueError(f"unknown schedule {cfg.name!r}")



# The keys of [schedule] each schedule reads besides its name.
_READS = {
    "constant": ("warmup_epochs",),
    "step": ("warmup_epochs", "step_epochs", "gamma"),
    "multistep": ("warmup_epochs", "milestones", "gamma"),
    "cosine": ("warmup_epochs", "min_lr"),
    "onecycle": ("pct_start", "div_factor", "final_div_factor"),
}


def schedule_warnings(cfg: ScheduleConfig, epochs: int | None = None) -> list[str]:
    """The ``[schedule]`` settings the chosen schedule does not read, where they differ from the defaults
    (a warm-up set for one-cycle, which warms up by its own rule, was silently ignored), the milestones or
    ``step_epochs`` that a run of ``epochs`` does not reach, and a warm-up that outlasts it.

    >>> schedule_warnings(ScheduleConfig(name="onecycle", warmup_epochs=1))
    ['schedule.warmup_epochs = 1.0 is not used by the onecycle schedule (it is read by constant, step, multistep and cosine only; one-cycle rises over its first pct_start of the steps)']
    >>> schedule_warnings(ScheduleConfig(name="multistep", milestones=(5, 10)), epochs=10)
    ['schedule.milestones: the rate drops after epoch 10 only in a run resumed with more epochs than train.epochs = 10']
    """
    late = [m for m in cfg.milestones if epochs is not None and m >= epochs] if cfg.name == "multistep" else []
    # The step schedule's first drop, after epoch step_epochs, is as out of reach as a late milestone: the rate
    # stayed at optimizer.lr for the whole run without a word.
    late += [cfg.step_epochs] if cfg.name == "step" and epochs is not None and cfg.step_epochs >= epochs else []
    return [*unread_settings("schedule", cfg, _READS, notes={
                "warmup_epochs": "one-cycle rises over its first pct_start of the steps"}),
            *([f"schedule.{'milestones' if cfg.name == 'multistep' else 'step_epochs'}: the rate "
               f"{'' if cfg.name == 'multistep' else 'first '}drops after epoch {', '.join(map(str, late))} only in "
               f"a run resumed with more epochs than train.epochs = {epochs}"] if late else []),
            *_warmup_warnings(cfg, epochs)]


def max_steps_warnings(cfg: ScheduleConfig, epochs: int, max_steps: int | None, steps_per_epoch: int) -> list[str]:
    """What of the schedule a run ended by ``train.max_steps`` does not reach, where ``epochs`` alone would
    (:func:`schedule_warnings` has said what they do not): the end of the warm-up, and drops of the step and
    multistep schedules. Cosine and one-cycle are planned over the steps the run takes, and fit into them.

    >>> max_steps_warnings(ScheduleConfig(name="constant", warmup_epochs=1), epochs=5, max_steps=50,
    ...                    steps_per_epoch=100)
    ['schedule.warmup_epochs = 1 is 100 steps, more than train.max_steps = 50: the run ends in the warm-up, its rate rising to only about 50% of optimizer.lr']
    """
    if max_steps is None or cfg.name == "onecycle":
        return []
    out = []
    warmup = warmup_steps(cfg, steps_per_epoch)
    said = cfg.warmup_epochs > epochs or (cfg.warmup_epochs == epochs and cfg.name == "cosine")  # by epochs
    if not said and warmup > max_steps:
        out.append(f"schedule.warmup_epochs = {cfg.warmup_epochs:g} is {warmup} steps, more than train.max_steps = "
                   f"{max_steps}: the run ends in the warm-up, its rate rising to only about "
                   f"{max_steps / warmup:.0%} of optimizer.lr"
                   + (" and never decaying to schedule.min_lr" if cfg.name == "cosine" else ""))
    elif not said and warmup == max_steps and cfg.name == "cosine":
        out.append(f"schedule.warmup_epochs = {cfg.warmup_epochs:g} is {warmup} steps, all of train.max_steps = "
                   f"{max_steps}: the cosine schedule has no steps left to decay to schedule.min_lr")
    # A drop after epoch e acts from step e x steps_per_epoch (0-based) on; the run's last step is max_steps - 1.
    drops = ([cfg.step_epochs] if cfg.name == "step" else list(cfg.milestones) if cfg.name == "multistep" else [])
    cut = [e for e in drops if e < epochs and e * steps_per_epoch >= max_steps]
    if cut:
        key = "milestones" if cfg.name == "multistep" else "step_epochs"
        out.append(f"schedule.{key}: the rate {'' if cfg.name == 'multistep' else 'first '}drops after epoch "
                   f"{', '.join(map(str, cut))}, which train.max_steps = {max_steps} ({steps_per_epoch} steps an "
                   "epoch) ends the run before")
    return out


def _warmup_warnings(cfg: ScheduleConfig, epochs: int | None) -> list[str]:
    """A warm-up the run's epochs do not see the end of: the rate never reached optimizer.lr (and a cosine
    schedule never decayed), without a word."""
    if epochs is None or cfg.name == "onecycle" or not cfg.warmup_epochs:
        return []
    if cfg.warmup_epochs > epochs:
        return [f"schedule.warmup_epochs = {cfg.warmup_epochs:g} is longer than train.epochs = {epochs}: the run "
                f"ends in the warm-up, its rate rising to only about {epochs / cfg.warmup_epochs:.0%} of optimizer.lr"
                + (" and never decaying to schedule.min_lr" if cfg.name == "cosine" else "")]
    if cfg.warmup_epochs == epochs and cfg.name == "cosine":
        return [f"schedule.warmup_epochs = {cfg.warmup_epochs:g} is all of train.epochs = {epochs}: the cosine "
                "schedule has no steps left to decay to schedule.min_lr"]
    return []
