"""Attention backend switch: PyTorch SDPA by default, xformers on request.

diffusers already routes attention through ``torch.nn.functional.scaled_dot_product_attention``
(``AttnProcessor2_0`` / ``JointAttnProcessor2_0``), so ``"sdpa"`` leaves the model as loaded.
xformers is an optional extra that needs a CUDA GPU; it is imported only here.
"""

from __future__ import annotations

import importlib.util

import torch

from diffalign.errors import DiffalignError

ATTENTION_BACKENDS = ("sdpa", "xformers")


class AttentionBackendError(DiffalignError, RuntimeError):
    """The requested attention backend cannot run on this machine."""


def set_attention_backend(model: torch.nn.Module, backend: str) -> None:
    """Switch a diffusers model's attention to ``backend``.

    Args:
        model: a diffusers ``ModelMixin`` (UNet, SD3 transformer, VAE).
        backend: ``"sdpa"`` or ``"xformers"``.

    Raises:
        AttentionBackendError: xformers asked for without the extra or without a GPU.
        ValueError: an unknown backend name.
    """
    if backend == "sdpa":
        return
    if backend != "xformers":
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(ATTENTION_BACKENDS)}")
    if importlib.util.find_spec("xformers") is None:
        raise AttentionBackendError(
            "attention: xformers needs the xformers package: pip install 'diffalign[xformers]' "
            "(or use attention: sdpa, the default)"
        )
    if not torch.cuda.is_available():
        raise AttentionBackendError("attention: xformers needs a CUDA GPU; on this machine use attention: sdpa")
    model.enable_xformers_memory_efficient_attention()
