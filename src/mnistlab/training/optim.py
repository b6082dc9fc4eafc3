"""Optimizers from the config, with PyTorch's fused/foreach kernels where they exist."""

from __future__ import annotations

from typing import Iterable

import torch

from ..config import OptimizerConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW, as ``cfg`` says.

    Adam and AdamW use the fused implementation (one kernel for all parameters)
    on CPU and CUDA, which PyTorch has shipped for both since 2.4; SGD uses the
    multi-tensor ``foreach`` path.
    """
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.decay, foreach=True
        )
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    fused = device.type in ("cpu", "cuda")
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.decay, fused=fused)
