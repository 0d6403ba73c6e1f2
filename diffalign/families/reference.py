"""The reference model of preference objectives.

Under LoRA the reference is the policy itself with its adapters switched off: no second copy of
the weights in memory (docs/architecture.md, §3). Under full fine-tuning it is a frozen copy of the starting
weights. Reference-free objectives (MaPO, SFT) get none and never run one.

A frozen copy runs in the policy's train/eval mode, never a fixed ``eval()``: diffusers' modules
take other code paths by mode (``ResnetBlock2D`` makes its shortcut input contiguous only when
training, and a convolution on a non-contiguous input runs another kernel), so a copy in eval mode
differs from the policy by rounding (1e-7) at step 1 where the two are the same weights, and β
amplifies that. In the policy's mode the two are computed alike and the first loss of a
preference objective is exactly log 2, on any CPU; the LoRA reference is the policy module itself,
so it always was. (Dropout, the other mode switch, is 0 in every family's denoiser.)
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext

import torch

from diffalign.families.shared_prefix import SharedPrefix


class Reference:
    """Computes the reference model's forward passes.

    Args:
        denoiser: the (unwrapped) trained module.
        lora: the denoiser carries LoRA adapters; the reference disables them.
        dtype: full fine-tuning only: dtype of the frozen copy (e.g. bf16 to halve its memory).
    """

    share_prefix = True
    """Under LoRA, :meth:`paired` lets the policy reuse what the reference computed alike
    (:mod:`~diffalign.families.shared_prefix`); ``False`` only to measure or test without it."""

    def __init__(self, denoiser: torch.nn.Module, lora: bool, dtype: torch.dtype | None = None):
        self.lora = lora
        self._prefix, self._paired = None, False
        if lora:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self.module = denoiser
            # The adapter layers, found once: diffusers' disable/enable_adapters walk every
            # submodule on each call, which the profile showed at ~5 % of a step on SDXL shapes.
            self._adapters = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
            self._prefix = SharedPrefix(denoiser) if self.share_prefix else None
        else:
            self.module = _frozen_copy(denoiser)
            if dtype is not None:
                self.module.to(dtype)
        self._policy = denoiser

    def release(self) -> None:
        """Let a full fine-tuning run's frozen copy go (its errors are stored: the reference pass);
        under LoRA there is no copy to free."""
        if not self.lora and self.module is not None:
            import weakref

            from diffalign.resources import collect_if_kept

            gone = weakref.ref(self.module)
            self.module = None
            collect_if_kept(gone)

    @contextmanager
    def paired(self):
        """Around one reference forward (through :meth:`active`) followed by the policy's forward
        on the same inputs: under LoRA the policy then skips what the reference computed alike
        (:class:`~diffalign.families.shared_prefix.SharedPrefix`); otherwise nothing changes."""
        if self._prefix is None:
            yield
            return
        with self._prefix.pair():
            self._paired = True
            try:
                yield
            finally:
                self._paired = False

    @contextmanager
    def active(self):
        """Yield the module to call as the reference, under ``no_grad``."""
        if self.module is None:
            raise RuntimeError("the reference's frozen copy was released (the run reads its errors from the "
                               "reference pass); nothing may run the reference after that")
        with torch.no_grad():
            if not self.lora:
                yield self.module.train(self._policy.training)
                return
            self._switch(False)
            try:
                with self._prefix.reference() if self._paired else nullcontext():
                    yield self.module
            finally:
                self._switch(True)

    def _switch(self, enabled: bool) -> None:
        for layer in self._adapters:
            layer.enable_adapters(enabled)


class Snapshot:
    """A frozen copy of the policy as of its last :meth:`refresh` (Diffusion-DRO's rollout model),
    or moved toward it softly (DiffusionNFT's old weights, :meth:`pairs`).

    Under LoRA only the trainable (adapter) tensors are copied, and :meth:`active` swaps them into
    the policy for the rollout and back afterwards: no second copy of the base weights. Under full
    fine-tuning it is a third copy of the denoiser, as in the official code.

    Args:
        denoiser: the (unwrapped) trained module.
        lora: the denoiser carries LoRA adapters.
    """

    def __init__(self, denoiser: torch.nn.Module, lora: bool):
        self.denoiser, self.lora = denoiser, lora
        if lora:
            self._names = [n for n, p in denoiser.named_parameters() if p.requires_grad]
            self._live = [p for p in denoiser.parameters() if p.requires_grad]
            self._saved = [p.detach().clone() for p in self._live]
        else:
            self.module = _frozen_copy(denoiser)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The snapshot's weights (under LoRA its adapters only), for a checkpoint."""
        if self.lora:
            return dict(zip(self._names, self._saved))
        return self.module.state_dict()

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take back the weights :meth:`state_dict` gave."""
        if not self.lora:
            self.module.load_state_dict(state)
            return
        if set(state) != set(self._names):
            raise ValueError(f"the snapshot in the checkpoint has other tensors ({len(state)}) than this run's "
                             f"adapters ({len(self._names)}): it was written with other LoRA settings")
        for name, saved in zip(self._names, self._saved):
            saved.copy_(state[name])

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the policy's current weights into the snapshot."""
        if self.lora:
            for saved, live in zip(self._saved, self._live):
                saved.copy_(live.detach())
        else:
            self.module.load_state_dict(self.denoiser.state_dict())

    def pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(snapshot tensors, the policy's tensors)`` in the same order, for an update of the
        snapshot in place (under LoRA the adapters', else every parameter)."""
        if self.lora:
            return self._saved, self._live
        return [p.data for p in self.module.parameters()], [p.detach() for p in self.denoiser.parameters()]

    @contextmanager
    def active(self):
        """Yield the module to call as the snapshot, under ``no_grad``."""
        with torch.no_grad():
            if not self.lora:
                yield self.module.train(self.denoiser.training)
                return
            current = [p.detach().clone() for p in self._live]
            for saved, live in zip(self._saved, self._live):
                live.copy_(saved)
            try:
                yield self.denoiser
            finally:
                for now, live in zip(current, self._live):
                    live.copy_(now)


def has_adapters(denoiser: torch.nn.Module) -> bool:
    """Whether ``denoiser`` carries LoRA adapters (peft's tuner layers)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in denoiser.modules())


def _frozen_copy(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``denoiser`` without gradients; :meth:`active` sets its mode to the policy's."""
    return copy.deepcopy(denoiser).requires_grad_(False)
