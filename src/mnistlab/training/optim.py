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
    saving 0.5-4.6% of a training step (``benchmarks/fused_optimizers.py``), and gave the
    same weights to float rounding. The others have no fused kernel and take the
    ``foreach`` path.
    """
    params = [p for p in params if p.requires_grad]
    lr, decay, eps = cfg.lr, cfg.setting("weight_decay"), cfg.setting("eps")
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    if cfg.name == "sgd":
        sgd = torch.optim.SGD(params, lr=lr, momentum=cfg.setting("momentum"), nesterov=cfg.nesterov,
                              weight_decay=decay, **fast)
        fill_missing_state(sgd)  # its momentum from zeros: see there
        return sgd
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
    from this step on.

    SGD with momentum gets its velocity as zeros for every parameter that has none (a new optimizer, the group
    ``finetune.unfreeze_at`` adds, a resume that turns momentum on): its first step then sets it to the
    gradient, as PyTorch's first step does (0 * momentum + gradient, bit for bit). PyTorch's fused step made
    it with ``torch.empty_like`` and left it so when the fp16 loss scale skipped that step (gradients that
    overflowed): the next step added whatever that memory held to the weights (1e19 here, then a NaN loss)."""
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            if group["momentum"] != 0:
                for p in group["params"]:
                    state = optimizer.state[p]
                    if state.get("momentum_buffer") is None:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return
    if not isinstance(optimizer, torch.optim.RMSprop):
        return
    for group in optimizer.param_groups:
        wanted = ["momentum_buffer"] * (group["momentum"] > 0) + ["grad_avg"] * bool(group["centered"])
        for p in group["params"]:
            state = optimizer.state.get(p)
            for key in wanted:
                if state and key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)


def lay_out_state_as_params(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's optimizer tensors (moments, momentum, Adagrad's sums) its memory layout.

    The fused kernels (SGD, Adam, AdamW, Adagrad) walk a parameter, its gradient and its state in storage
    order, as if all had the same strides: a state in another layout had its values paired with other
    elements of the parameter, and the step came out wrong, silently. A checkpoint holds the state in the
    layout its run trained in, and a resume may change that (``train.channels_last``, or ``train.device``
    where it picks the layout): resumed in channels-last from an NCHW run, SGD's weights were 4e-3 and
    Adagrad's 3e-2 from the run's own (the multi-tensor step: 1e-8 and 1e-5)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            for key, value in (state or {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
