"""Batched data augmentation on the training device: random affine and elastic distortion.

One random transform per image, drawn for the whole batch at once and applied
with a single ``affine_grid`` / ``grid_sample`` pass (no per-image Python, no
PIL): for a batch of 256 MNIST digits this costs about as much as one small
conv layer. Pixels moved in from outside the image are black (zero), which is
the background of every MNIST-family dataset. Left-right flips (``hflip``) are
for Fashion-MNIST only: a mirrored digit or character is another symbol (or none).

The random numbers come from the global torch RNG of the images' device, which
checkpoints store, so a resumed run draws exactly the transforms an
uninterrupted one would.

>>> import torch
>>> from mnistlab.config import AugmentConfig
>>> x = torch.rand(8, 1, 28, 28)
>>> augment(x, AugmentConfig(enabled=True, rotation=10.0)).shape
torch.Size([8, 1, 28, 28])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig

__all__ = ["augment", "affine_matrices", "elastic_offsets", "shift_images"]


def _uniform(n: int, half_width: float, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2 - 1) * half_width


def affine_matrices(n: int, cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """``n`` random 2x3 matrices for ``affine_grid``, mapping output to input coordinates in [-1, 1].

    Rotation and shear in degrees (uniform in +-value), scale as a fraction
    (uniform in 1 +- value, the digit grows when the factor is above 1), shift as
    a fraction of the image side (uniform in +-value per axis). The shift is drawn
    in the input's frame, before the rotation, scaling and shear about the centre
    act on it, so the digit moves by up to about 1.3x ``shift`` at the best
    preset's ranges (torchvision's RandomAffine shifts after them, by at most
    the value); the best preset's figures were measured this way.
    """
    angle = torch.deg2rad(_uniform(n, cfg.rotation, device))
    shear = torch.deg2rad(_uniform(n, cfg.shear, device))
    scale = 1 + _uniform(n, cfg.scale, device)
    # affine_grid's coordinates span 2 units per side, so a shift of s sides is 2s units;
    # the matrix maps output pixels to where they are sampled, hence the inverse transform.
    shift = _uniform(2 * n, 2 * cfg.shift, device).view(n, 2)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # The sampling matrix rotate(-angle) @ shear-x(shear) / scale: the image is rotated by
    # +angle, sheared, and grows by `scale` (angles are symmetric, so the signs do not matter).
    m = torch.empty(n, 2, 3, device=device)
    m[:, 0, 0] = cos / scale
    m[:, 0, 1] = (sin + cos * tan) / scale
    m[:, 1, 0] = -sin / scale
    m[:, 1, 1] = (cos - sin * tan) / scale
    m[:, :, 2] = -shift
    return m


def _smoothing_matrix(size: int, kernel: torch.Tensor) -> torch.Tensor:
    """The (size, size) matrix that convolves a vector with ``kernel`` (odd length, centred) under
    reflect padding, the edge pixel not repeated: ``m @ v`` equals ``conv1d(pad(v, mode="reflect"), kernel)``.

    Needs a kernel radius below ``size`` (one reflection per side).
    """
    radius = kernel.numel() // 2
    if size == 1:
        return kernel.sum().view(1, 1)  # reflecting a single pixel gives itself
    taps = torch.arange(-radius, radius + 1, device=kernel.device)
    source = (torch.arange(size, device=kernel.device)[:, None] + taps).abs()  # reflect below 0
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # and above size - 1
    return torch.zeros(size, size, device=kernel.device).scatter_add_(1, source, kernel.expand(size, -1).contiguous())


def elastic_offsets(n: int, size: tuple[int, int], cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """Smooth random displacement fields (Simard et al. 2003), shape (n, H, W, 2), in grid units.

    Uniform noise in [-1, 1] per pixel and axis, smoothed by a Gaussian of
    ``elastic_sigma`` pixels (reflecting at the borders) and scaled by
    ``elastic_alpha`` pixels.
    """
    h, w = size
    sigma = cfg.elastic_sigma
    # 3 sigma each side, but no more taps than one reflection at the border reaches (fewer than the side):
    # a wider sigma is cut there (its Gaussian is nearly flat over the image anyway).
    radius = max(1, min(h, w) - 1 if 3 * sigma >= min(h, w) - 1 else math.ceil(3 * sigma))  # ceil(inf) would raise
    taps = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)  # not taps**2 / sigma**2: a tiny sigma's square is 0 (NaN)
    kernel = kernel / kernel.sum()
    noise = torch.rand(n * 2, h, w, device=device) * 2 - 1
    # The separable Gaussian as two small matrix products, rows then columns (the reflect padding folded
    # into the matrices): a batch of 128 fields took 0.19x the time of padding and convolving with the
    # 31 taps of sigma 5, three quarters of it now spent drawing the noise (benchmarks/elastic.txt).
    noise = _smoothing_matrix(h, kernel) @ noise @ _smoothing_matrix(w, kernel).T
    # pixels -> grid units (2 units span the side)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=device) * cfg.elastic_alpha
    return noise.view(n, 2, h, w).permute(0, 2, 3, 1) * scale


def augment(images: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """A randomly transformed copy of a batch (N, C, H, W) of any float dtype or uint8, in that dtype (uint8
    rounded); the batch itself is unchanged. Rotations and shears turn the image in pixels, also where H != W.

    With ``hflip``, half the images (at random) are mirrored left-right first:
    for Fashion-MNIST, not digits (a mirrored 2 is no digit). Labels stay valid as long as the ranges
    stay small, as in the defaults and the presets: the config takes rotations up
    to 180 degrees (a 6 turns into a 9) and shifts up to the whole side (the digit
    leaves the frame), for experiments that want them.
    Returns ``images`` itself when augmentation is off, the batch is empty, or every range is 0 and no flips are
    asked for.
    """
    if not cfg.enabled or images.shape[0] == 0:  # affine_grid refuses 0 images (a rank's share of a small batch)
        return images
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise ValueError(f"augment needs float or uint8 images, got {images.dtype}")
    if cfg.hflip:  # exact, by reindexing (no resampling), and before the affine draws: one stream either way
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if not (cfg.rotation or cfg.scale or cfg.shift or cfg.shear or cfg.elastic_alpha):
        return images  # all ranges 0: the identity, exactly (grid_sample would round) and without drawing numbers
    n, _, h, w = images.shape
    theta = affine_matrices(n, cfg, images.device)
    # The matrices act on grid units, where both sides span 2: on an H != W image a rotation there would also
    # stretch the digit. Conjugated by the grid's pixel scales (W/2, H/2), they rotate and shear in pixels.
    theta[:, 0, 1] *= h / w
    theta[:, 1, 0] *= w / h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if cfg.elastic_alpha > 0:
        grid = grid + elastic_offsets(n, (h, w), cfg, images.device)
    # grid_sample wants the grid in the images' dtype, and samples no uint8. float16 and bfloat16 go through
    # float32 too: a bfloat16 grid is off by up to 1/16 of a pixel, and the image by 0.19 at an edge.
    source = images.double() if images.dtype == torch.float64 else images.float()
    out = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype) if images.is_floating_point() else out.round_().clamp_(0, 255).to(images.dtype)


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The batch moved ``dx`` pixels right and ``dy`` down (negative: left, up), black filling in.

    >>> x = torch.arange(4.0).view(1, 1, 1, 4)
    >>> shift_images(x, 1, 0).tolist()
    [[[[0.0, 0.0, 1.0, 2.0]]]]
    """
    h, w = images.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        return torch.zeros_like(images)
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]
