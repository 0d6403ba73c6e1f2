"""Optimisers and learning-rate schedules."""

from __future__ import annotations

import torch

from diffalign.config import OptimConfig


def make_optimizer(params, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (the ``bnb`` extra) for ``adamw_8bit``.

    PyTorch's AdamW is taken in its fused form (one kernel for every parameter's update) where
    :func:`fused_adamw_supported` says it runs. Its default is a Python loop over the parameters on
    CPU and ``foreach`` on CUDA: on the mini SDXL's 1,120 LoRA tensors the loop took 98 ms an update,
    ``foreach`` 56 ms and the fused kernel 16 ms (README, "Benchmarks"). The update is the same
    arithmetic; its rounding differs from the loop's in the last bits.
    """
    params = list(params)
    kwargs = dict(lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay, eps=config.eps)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs, fused=fused_adamw_supported(params) or None)
    return bnb_adamw(params, **kwargs)


def fused_adamw_supported(params: list) -> bool:
    """Whether PyTorch's fused AdamW takes every one of ``params``: floating-point tensors on CPU or
    CUDA (other devices and parameter groups keep PyTorch's default)."""
    tensors = [p for p in params if isinstance(p, torch.Tensor)]
    return bool(tensors) and len(tensors) == len(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)


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
