"""One forward for what the policy and its LoRA-disabled reference compute alike.

Under LoRA the reference is the policy with its adapters off, and a step runs both on the same
inputs (the same noisy latents, times and conditioning). Everything the two compute before the
first adapted layer is therefore the same: ``conv_in``, the time and added embeddings, and on SDXL
the whole first down block (no attention there, so no adapter); with the default LoRA targets
(the attention projections) also the first ResNets and projections of later blocks whose inputs
are still adapter-free. :class:`SharedPrefix` lets the policy reuse those outputs from the
reference's forward instead of computing them again.

Which calls are shared is read from autograd, not from a list per architecture: in the policy's
forward (gradients on), a submodule whose parameters are all frozen and whose tensor inputs need
no gradient computes a function of the step's inputs and of frozen weights only, which the
reference computed identically one forward earlier. The first paired forward finds these calls
(the plan); from the second on, the reference's forward keeps their outputs and the policy's
returns them without running the submodule. Nothing about its gradient changes: such a call has
no trainable parameter and no input that needs a gradient, so backward never enters it.

Guards: each reused call is checked again (gradients on, no input needing one, the same input
shapes and dtypes as the reference's call); a check that fails computes the call as usual.
Subtrees that ``torch.compile`` compiled (``compile: regional`` or ``true``) are left to the
compiler, and a call inside an unshared frozen submodule is never looked at separately.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def frozen_roots(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The largest submodules of ``module`` with parameters, none of them trainable, outside
    compiled subtrees (in module order; they never contain one another)."""
    for name, child in module.named_children():
        if getattr(child, "_compiled_call_impl", None) is not None:
            continue
        params = list(child.parameters())
        if not params:
            continue
        if not any(p.requires_grad for p in params):
            yield prefix + name, child
        else:
            yield from frozen_roots(child, f"{prefix}{name}.")


def _tensors(value) -> Iterator[torch.Tensor]:
    """Every tensor in a call's arguments (nested tuples, lists and dicts included)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _signature(args, kwargs) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in _tensors((args, kwargs)))


def _gradient_free(args, kwargs) -> bool:
    """The call runs with gradients on and none of its inputs needs one (see the module doc)."""
    return torch.is_grad_enabled() and not any(t.requires_grad for t in _tensors((args, kwargs)))


class SharedPrefix:
    """Reuses, in the policy's forward, the reference's outputs of the calls both compute alike.

    Use: ``with prefix.pair():`` around one reference forward (inside :meth:`reference`) followed
    by one policy forward on the same inputs. ``calls_reused`` counts reused calls (for tests).

    Args:
        denoiser: the LoRA denoiser (policy and reference are this one module).
    """

    def __init__(self, denoiser: nn.Module):
        self.denoiser = denoiser
        self.plan: set[tuple[str, int]] | None = None
        self._planning: set[tuple[str, int]] = set()
        self._planned_with_grad = False
        self._phase: str | None = None  # "record" (the reference), "plan" or "reuse" (the policy)
        self._calls: defaultdict[str, int] = defaultdict(int)
        self._kept: dict[tuple[str, int], tuple[tuple, object]] = {}
        self._originals: dict[str, tuple[nn.Module, object | None]] = {}
        self.calls_reused = 0

    @contextmanager
    def pair(self):
        """One reference forward then one policy forward; the first such pair makes the plan."""
        if not self._originals and self.plan is None:
            self._wrap(dict(frozen_roots(self.denoiser)))
        self._phase = "plan" if self.plan is None else "reuse"
        try:
            yield self
        finally:
            if self._phase == "plan" and self._planned_with_grad:  # a no-grad pair (evaluation) plans nothing
                self.plan = self._planning
                self._unwrap_unplanned()
            self._phase, self._kept = None, {}
            self._calls.clear()

    @contextmanager
    def reference(self):
        """Around the reference's forward inside :meth:`pair`: keep the planned calls' outputs."""
        policy_phase, self._phase = self._phase, ("record" if self._phase == "reuse" else None)
        try:
            yield
        finally:
            self._phase = policy_phase
            self._calls.clear()

    def _wrap(self, roots: dict[str, nn.Module]) -> None:
        for name, module in roots.items():
            own = vars(module).get("forward")  # an instance's own forward (accelerate's hooks set one)
            module.forward = self._wrapper(name, module.forward)
            self._originals[name] = (module, own)

    def _unwrap_unplanned(self) -> None:
        planned = {name for name, _ in self.plan}
        for name in [n for n in self._originals if n not in planned]:
            module, own = self._originals.pop(name)
            if own is None:
                del module.forward  # the class's forward shows again
            else:
                module.forward = own

    def _wrapper(self, name: str, original):
        def forward(*args, **kwargs):
            phase = self._phase
            if phase is None:
                return original(*args, **kwargs)
            key = (name, self._calls[name])
            self._calls[name] += 1
            if phase == "plan":
                self._planned_with_grad |= torch.is_grad_enabled()
                if _gradient_free(args, kwargs):
                    self._planning.add(key)
                return original(*args, **kwargs)
            if key not in self.plan:
                return original(*args, **kwargs)
            if phase == "record":
                out = original(*args, **kwargs)
                self._kept[key] = (_signature(args, kwargs), out)
                return out
            kept = self._kept.pop(key, None)
            if kept is not None and kept[0] == _signature(args, kwargs) and _gradient_free(args, kwargs):
                self.calls_reused += 1
                return kept[1]
            return original(*args, **kwargs)

        return forward
