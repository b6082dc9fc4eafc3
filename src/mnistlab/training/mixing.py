"""mixup and CutMix: each training batch blended with a shuffled copy of itself, labels in the same shares.

mixup (Zhang et al., 2018, "mixup: Beyond Empirical Risk Minimization") trains on
``a * x_i + (1 - a) * x_j`` against ``a * y_i + (1 - a) * y_j``; CutMix (Yun et al.,
2019) pastes a box of ``x_j`` into ``x_i`` and weighs the labels by the areas. As in
timm, one share ``a`` is drawn per batch from Beta(alpha, alpha) and the partner
``j`` of each image is a random permutation of the batch; with the labels as class
indices, the loss is ``a * CE(logits, y) + (1 - a) * CE(logits, y[perm])``, the
cross-entropy against the blended one-hot labels (label smoothing included).

The numbers come from the global torch RNG (the share and CutMix's box from the
CPU's, the permutation from the images' device), which checkpoints store: a resumed
run mixes as an uninterrupted one would.

>>> import torch
>>> from mnistlab.config import MixupConfig
>>> _ = torch.manual_seed(0)
>>> x, y = torch.rand(8, 1, 28, 28), torch.arange(8)  # labels 0-7: a partner's label is its index
>>> mixed, partner, share = mix_batch(x, y, MixupConfig(alpha=0.2))
>>> torch.allclose(mixed, share * x + (1 - share) * x[partner])
True
"""

from __future__ import annotations

import math

import torch

from ..config import MixupConfig
from ..errors import ConfigError

__all__ = ["mix_batch"]


def _beta(alpha: float) -> float:
    # float64: in float32 the two gamma draws of a small alpha underflow to 0 more often
    a = torch.tensor(alpha, dtype=torch.float64)
    if alpha >= 0.01:  # the draws runs (and their checkpoints) have always made
        return float(torch.distributions.Beta(a, a).sample())
    # Below, torch's Beta underflows both gammas to 0 and then draws exactly 0.5: a quarter of the batches at
    # alpha 0.001 (the config's least), which should mix almost none, were half-and-half blends. So Beta(a, a)
    # as G1 / (G1 + G2) with the gammas in log space: Gamma(a) = Gamma(a + 1) * U**(1/a).
    a = a.expand(2)
    gamma = torch.distributions.Gamma(a + 1, torch.ones_like(a)).sample()
    log_g = torch.log(gamma) + torch.log(torch.rand(2, dtype=torch.float64)) / a
    return float(torch.sigmoid(log_g[0] - log_g[1]))


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: MixupConfig, crop: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mixed images, partner labels, share)``: the batch ``x`` (float, N x C x H x W) blended with
    ``x[perm]``, ``y[perm]``, and the share of each image's own label in the blend.

    With both alphas above 0, each batch is mixed by mixup or by CutMix, at even odds. CutMix's box lies
    inside what a model with ``crop`` pixels cut from each side sees, and the share is 1 minus the box's
    part of that area, as it came out in whole pixels (the box is clipped at the edges, as in the paper).
    With both alphas 0 (``[mixup]`` off, as the config has it) the batch comes back as it is, with share 1.
    Integer images are a ConfigError where mixup is on (its blends are fractions of pixels); CutMix alone takes them.
    """
    if not cfg.enabled:  # Beta(0, 0) raised torch's "Expected parameter concentration ... to satisfy" here
        return x, y, 1.0
    # Checked before any draw: with both alphas on, uint8 images (augment keeps them uint8) failed with torch's
    # "lerp_kernel_scalar not implemented for 'Byte'" only in the batches the coin gave to mixup.
    if cfg.alpha > 0 and not x.is_floating_point():
        raise ConfigError(f"mix_batch(): mixup blends pixels into fractions, which {x.dtype} images cannot hold; "
                          "pass float images in [0, 1] (mnistlab.data.batching.to_float converts uint8 ones)")
    n = x.shape[0]
    perm = torch.randperm(n, device=x.device)
    cutmix = cfg.cutmix_alpha > 0 and (cfg.alpha == 0 or float(torch.rand(())) < 0.5)
    share = _beta(cfg.cutmix_alpha if cutmix else cfg.alpha)
    if not cutmix:
        return torch.lerp(x[perm], x, share), y[perm], share
    h, w = x.shape[-2] - 2 * crop, x.shape[-1] - 2 * crop
    side = math.sqrt(1.0 - share)  # the box's sides, as fractions of the view's: its area is 1 - share
    bh, bw = round(h * side), round(w * side)
    cy, cx = (int(torch.randint(size, ())) for size in (h, w))  # its centre, anywhere in the view
    top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    mixed = x.clone()
    rows, cols = slice(crop + top, crop + bottom), slice(crop + left, crop + right)
    mixed[..., rows, cols] = x[perm][..., rows, cols]
    return mixed, y[perm], 1.0 - (bottom - top) * (right - left) / (h * w)
