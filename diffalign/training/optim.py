"""Optimisers and learning-rate schedules."""

from __future__ import annotations

import torch

from diffalign.config import OptimConfig


def make_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (the ``bnb`` extra) for ``adamw_8bit``."""
    kwargs = dict(lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, eps=config.eps)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    return bnb_adamw(params, **kwargs)


def bnb_adamw(params, **kwargs) -> torch.optim.Optimizer:
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError("optim.optimizer: adamw_8bit needs bitsandbytes: pip install 'diffalign[bnb]'") from err
    return bitsandbytes.optim.AdamW8bit(params, **kwargs)


def make_scheduler(optimizer, config: OptimConfig, max_steps: int, num_processes: int):
    """diffusers' ``get_scheduler``; step counts are multiplied by the number of processes
    because accelerate steps a prepared scheduler once per process."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler, optimizer,
        num_warmup_steps=config.warmup_steps * num_processes,
        num_training_steps=max_steps * num_processes,
    )
