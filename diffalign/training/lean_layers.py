"""Layers that keep less for backward than PyTorch's own, with the same gradients.

Two activations that autograd keeps are never read, or cost one elementwise op to remake:

- **Frozen convolutions.** PyTorch saves a convolution's input whenever its output needs a
  gradient. With the weight and bias frozen, only the input's gradient is wanted, and that needs
  the weight alone (pytorch/pytorch#133566; a frozen ``nn.Linear`` already skips the input). Under LoRA every convolution of a UNet is frozen, so each ResNet block keeps two
  full-size activations (its convolutions' inputs) that backward never reads. The lean
  convolution keeps only the input's shape and gets the input's gradient from
  ``torch.nn.grad.conv*d_input``, the transposed convolution autograd would run too.
- **GEGLU** (diffusers' gated feed-forward in SD1.5/SDXL transformer blocks:
  ``h ⊙ gelu(g)`` with ``[h, g] = proj(x)``). Autograd keeps ``gelu(g)`` for the product's
  backward beside ``h`` and ``g``; the lean one remakes ``gelu(g)`` in backward from the ``g`` it
  keeps anyway. ``gelu(g)`` is half the projection's width: on the SDXL architecture at 1/8
  width it was 14 % of everything a LoRA step keeps for backward (the convolutions' inputs 4 %).

:func:`lean_layers` switches a model's layers in place (their class, not their parameters).
Trainable convolutions (full fine-tuning, LoRA on a convolution's weight) and no-grad passes
take PyTorch's path. The gradients are bit-identical: the same kernels on the same inputs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------- convolutions
class _FrozenConvFunction(torch.autograd.Function):
    """``conv(x, weight, bias)`` that saves the weight, not ``x``, for ``x``'s gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, dims):
        ctx.save_for_backward(weight)
        ctx.conf = (x.shape, x.dtype, stride, padding, dilation, groups, dims)
        return _CONV[dims](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, dtype, stride, padding, dilation, groups, dims = ctx.conf
        # Under autocast the forward ran in the autocast dtype: run backward in grad's dtype.
        grad_input = _CONV_INPUT_GRAD[dims](shape, weight.to(grad.dtype), grad, stride, padding, dilation, groups)
        return grad_input.to(dtype), None, None, None, None, None, None, None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


class _LeanConv:
    """Mixed into ``nn.ConvNd``: the frozen case goes through :class:`_FrozenConvFunction`."""

    _dims: int

    def _conv_forward(self, input, weight, bias):
        frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
        # Non-zero padding modes pad first and string paddings ("same") have no fixed tuple:
        # both are left to PyTorch (diffusers' models use neither).
        if (frozen and input.requires_grad and torch.is_grad_enabled() and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)):
            return _FrozenConvFunction.apply(input, weight, bias, self.stride, self.padding, self.dilation,
                                             self.groups, self._dims)
        return super()._conv_forward(input, weight, bias)


class LeanConv1d(_LeanConv, nn.Conv1d):
    _dims = 1


class LeanConv2d(_LeanConv, nn.Conv2d):
    _dims = 2


class LeanConv3d(_LeanConv, nn.Conv3d):
    _dims = 3


# ---------------------------------------------------------------------------------- GEGLU
class _GatedGeluFunction(torch.autograd.Function):
    """``h ⊙ gelu(g)`` (exact, erf GELU) that remakes ``gelu(g)`` in backward instead of saving it."""

    @staticmethod
    def forward(ctx, h, g):
        ctx.save_for_backward(h, g)
        return h * F.gelu(g)

    @staticmethod
    def backward(ctx, grad):
        h, g = ctx.saved_tensors
        # What autograd runs for `h * gelu(g)`: mul's two backwards, then gelu's.
        grad_h = grad * F.gelu(g) if ctx.needs_input_grad[0] else None
        grad_g = torch.ops.aten.gelu_backward(grad * h, g) if ctx.needs_input_grad[1] else None
        return grad_h, grad_g


@functools.cache
def _lean_geglu_class():
    from diffusers.models.activations import GEGLU

    class LeanGEGLU(GEGLU):
        """diffusers' ``GEGLU`` whose product keeps ``h`` and ``g`` only (see the module docstring)."""

        def forward(self, hidden_states, *args, **kwargs):
            if args or kwargs.get("scale") is not None or hidden_states.device.type not in ("cpu", "cuda"):
                return super().forward(hidden_states, *args, **kwargs)  # its deprecations, NPU/MPS paths
            h, g = self.proj(hidden_states).chunk(2, dim=-1)
            if torch.is_grad_enabled() and (h.requires_grad or g.requires_grad):
                return _GatedGeluFunction.apply(h, g)
            return h * F.gelu(g)

    # Reachable as ``lean_layers.LeanGEGLU`` (module ``__getattr__``), so pickle finds it by name.
    LeanGEGLU.__module__, LeanGEGLU.__qualname__ = __name__, "LeanGEGLU"
    return GEGLU, LeanGEGLU


def __getattr__(name: str):
    # The GEGLU subclass is built on first use, so importing this module does not import diffusers.
    if name == "LeanGEGLU":
        return _lean_geglu_class()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------- the switch
def _lean_classes() -> dict[type, type]:
    """PyTorch's or diffusers' layer class → its lean subclass."""
    geglu, lean_geglu = _lean_geglu_class()
    return {nn.Conv1d: LeanConv1d, nn.Conv2d: LeanConv2d, nn.Conv3d: LeanConv3d, geglu: lean_geglu}


def lean_layers(model: nn.Module) -> int:
    """Make ``model``'s plain convolutions and diffusers ``GEGLU`` layers keep less for backward.

    In place: each module's class becomes its lean subclass, so parameters, state dicts, peft
    adapters wrapping it and ``isinstance`` checks are unchanged. Subclasses of those classes
    (other libraries' own layers) are left alone.

    Returns:
        How many layers were changed.
    """
    classes = _lean_classes()
    changed = 0
    for module in model.modules():
        lean = classes.get(type(module))
        if lean is not None:
            module.__class__ = lean
            changed += 1
    return changed
