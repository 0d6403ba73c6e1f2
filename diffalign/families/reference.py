"""The reference model of preference objectives.

Under LoRA the reference is the policy itself with its adapters switched off: no second copy of
the weights in memory (DESIGN.md §4). Under full fine-tuning it is a frozen copy of the starting
weights. Reference-free objectives (MaPO, SFT) get none and never run one.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch


class Reference:
    """Computes the reference model's forward passes.

    Args:
        denoiser: the (unwrapped) trained module.
        lora: the denoiser carries LoRA adapters; the reference disables them.
        dtype: full fine-tuning only: dtype of the frozen copy (e.g. bf16 to halve its memory).
    """

    def __init__(self, denoiser: torch.nn.Module, lora: bool, dtype: torch.dtype | None = None):
        self.lora = lora
        if lora:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self.module = denoiser
            # The adapter layers, found once: diffusers' disable/enable_adapters walk every
            # submodule on each call, which the profile showed at ~5 % of a step on SDXL shapes.
            self._adapters = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
        else:
            self.module = copy.deepcopy(denoiser).requires_grad_(False).eval()
            if dtype is not None:
                self.module.to(dtype)

    @contextmanager
    def active(self):
        """Yield the module to call as the reference, under ``no_grad``."""
        with torch.no_grad():
            if not self.lora:
                yield self.module
                return
            self._switch(False)
            try:
                yield self.module
            finally:
                self._switch(True)

    def _switch(self, enabled: bool) -> None:
        for layer in self._adapters:
            layer.enable_adapters(enabled)
