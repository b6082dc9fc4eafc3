"""An exponential moving average (EMA) of a model's weights, kept beside it during training.

After every optimizer step, each floating-point entry of the state dict moves
towards the trained model's: ``ema = decay * ema + (1 - decay) * weights``
(a weight tied under two names once, as torch's ``AveragedModel`` does).
The average smooths out the noise of the last few hundred steps, which usually
gives a slightly better model than the final weights for free.

Batch norm: the running mean and variance are buffers in the state dict, so
they are averaged with the same decay as the weights (as timm's ``ModelEmaV2``
does). They then describe activations of a blend of recent models, which is
close to the averaged model's own as long as the average spans a small part of
training; ``num_batches_tracked`` (an integer) is copied.

>>> import torch
>>> from torch import nn
>>> net = nn.Linear(2, 1)
>>> ema = WeightAverage(net, decay=0.5, warmup=False)
>>> with torch.no_grad():
...     _ = net.weight.add_(1.0)
>>> ema.update(net)
>>> torch.allclose(ema.module.weight, net.weight - 0.5)
True
"""

from __future__ import annotations

import copy
import numbers
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


class WeightAverage:
    """The EMA of ``model``: ``module`` is a frozen copy in eval mode, updated by :meth:`update`."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        # As ema.decay is checked in the config: 1.5 extrapolated away from the weights (a diverging "average"),
        # 1 kept the first weights, NaN made every weight NaN, all without a word.
        # Any real number: numpy's float32 (a value read from an array) was refused as "not a number in (0, 1)".
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 < decay < 1.0:
            raise ConfigError(f"the weight average's decay must be a number in (0, 1), got {decay!r}")
        try:
            self.module = copy.deepcopy(model).eval()
        except RuntimeError as e:  # torch's own message only guessed at the cause and named no fix
            if "deepcopy protocol" not in str(e):
                raise
            raise ConfigError(
                "the weight average ([ema]) keeps a copy of the model, and this one cannot be copied: it holds a "
                "tensor computed from its weights (as torch.nn.utils.weight_norm, deprecated, does); build it with "
                "torch.nn.utils.parametrizations.weight_norm, or turn [ema] off") from None
        self.module.requires_grad_(False)
        self.decay, self.warmup = float(decay), warmup
        self.updates = 0

    def current_decay(self) -> float:
        # With warm-up the first updates follow the weights closely: an average that
        # starts at the random initial weights would otherwise need ~1/(1-decay) steps to forget them.
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        mine, theirs = self.module.state_dict(), model.state_dict()
        # Each tensor once: a tied weight (one Parameter under two names) is two state-dict entries of one
        # tensor, and was moved towards the weights twice a step (decay**2: 0.75 of the way for decay 0.5).
        # torch's AveragedModel averages model.parameters(), which lists it once.
        seen: set[tuple] = set()
        floats = []
        for k, v in mine.items():
            if v.is_floating_point() and (key := (v.data_ptr(), v.shape, v.stride(), v.dtype)) not in seen:
                seen.add(key)
                floats.append(k)
        torch._foreach_lerp_([mine[k] for k in floats], [theirs[k] for k in floats], 1.0 - decay)
        for k, v in mine.items():
            if not v.is_floating_point():
                v.copy_(theirs[k])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from .checkpoint import load_weights

        load_weights(self.module, state["weights"], source="the checkpoint's weight average")
        self.updates = int(state["updates"])
