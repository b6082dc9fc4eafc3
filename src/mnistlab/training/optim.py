"""Optimizers from the config, with PyTorch's fused/foreach kernels where they exist."""

from __future__ import annotations

from typing import Iterable

import torch

from ..config import OptimizerConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW, NAdam, Adamax, RMSprop, Adadelta or Adagrad, as ``cfg``
    says; a key the config leaves unset takes the optimizer's own default (``OptimizerConfig.setting``).

    SGD, Adam, AdamW and Adagrad take PyTorch's fused step (one kernel for all
    parameters) on CPU and CUDA: on the AVX2 EPYC it took 0.55-0.69x the time of
    the multi-tensor ``foreach`` path for SGD, 0.31-0.45x for Adagrad and Adam,
    0.5-4.6% of a training step (``benchmarks/fused_optimizers.py``), and gave the
    same weights to float rounding. The others have no fused kernel and take the
    ``foreach`` path.
    """
    params = [p for p in params if p.requires_grad]
    lr, decay, eps = cfg.lr, cfg.setting("weight_decay"), cfg.setting("eps")
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.setting("momentum"), nesterov=cfg.nesterov,
                               weight_decay=decay, **fast)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.setting("rho"), eps=eps, weight_decay=decay,
                                   momentum=cfg.setting("momentum"), centered=cfg.centered, foreach=True)
    if cfg.name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=cfg.setting("rho"), eps=eps, weight_decay=decay, foreach=True)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=decay, **fast)
    if cfg.name in ("nadam", "adamax"):
        cls = torch.optim.NAdam if cfg.name == "nadam" else torch.optim.Adamax
        return cls(params, lr=lr, betas=tuple(cfg.betas), eps=eps, weight_decay=decay, foreach=True)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=tuple(cfg.betas), eps=eps, weight_decay=decay, **fast)


def fill_missing_state(optimizer: torch.optim.Optimizer) -> None:
    """Give RMSprop the buffers a resume with momentum or centered newly on needs: PyTorch makes them, as
    zeros, only in a parameter's first step, and its later steps would fail on the missing key.

    Zeros are what a fresh run starts them from: the velocity builds up, and the mean gradient is estimated,
    from this step on."""
    if not isinstance(optimizer, torch.optim.RMSprop):
        return
    for group in optimizer.param_groups:
        wanted = ["momentum_buffer"] * (group["momentum"] > 0) + ["grad_avg"] * bool(group["centered"])
        for p in group["params"]:
            state = optimizer.state.get(p)
            for key in wanted:
                if state and key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
