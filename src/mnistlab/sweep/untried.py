"""A sampler for finite search spaces (lists, int ranges, float ranges with a step) that never proposes the
values of a trial the study already holds.

TPE and random sampling draw each trial independently: over 2 optimizers x 2 batch sizes, ten trials
trained the same four configs again and again, each a whole training run. Wrapped in :class:`Untried`, the
sampler's own proposal is taken when no trial has those values yet; otherwise a random untried point is.

Imported only when a sweep runs (it needs Optuna, an optional extra).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .spec import Param, SweepSpec, point_key, space_size


def distribution(p: Param) -> BaseDistribution:
    """The Optuna distribution of a parameter, as ``runner.suggest`` asks for it."""
    if p.type == "float":
        return FloatDistribution(p.low, p.high, step=p.step, log=p.log)
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return CategoricalDistribution(p.labels())


class Untried(optuna.samplers.BaseSampler):
    """``inner``'s proposal if no trial in ``taken()`` has those values, else a random point none has.

    ``taken`` returns the values of the trials no new one may repeat (see ``runner.taken_params``). It reads
    the study itself: the study Optuna passes a sampler is only the trial's bracket under the hyperband pruner.
    The caller samples under the study lock, so that a worker sees the values the others have just drawn.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, spec: SweepSpec, seed: int,
                 taken: Callable[[], list[dict[str, Any]]]) -> None:
        if space_size(spec.params) is None:
            raise ValueError("Untried needs a finite search space (no float range without a step)")
        self.inner, self.spec, self.taken = inner, spec, taken
        self.rng = random.Random(seed)
        self.space = {p.key: distribution(p) for p in spec.params}

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self.space  # the whole point is drawn at once, so that it can be compared with the others

    def sample_relative(self, study, trial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        taken = {point_key(self.spec, labels) for labels in self.taken()}
        proposal = {}
        for key, dist in search_space.items():  # a one-value list has nothing to draw (Optuna skips it too)
            if dist.single():
                proposal[key] = self.spec.param(key).label_at(0)
            else:
                proposal[key] = self.inner.sample_independent(study, trial, key, dist)
        if point_key(self.spec, proposal) not in taken:
            return proposal
        if len(taken - {None}) >= space_size(self.spec.params):
            return proposal  # none left: runner.work stops before asking, so only a race on a server database gets here
        while True:  # drawn until untried: each untried point as likely as another, in size / untried draws on average
            point = {p.key: p.label_at(self.rng.randrange(p.size())) for p in self.spec.params}
            if point_key(self.spec, point) not in taken:
                return point

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
        self.rng.seed()
