"""Layers that keep less for backward than PyTorch's own, with the same gradients.

Two activations that autograd keeps are never read, or cost one elementwise op to remake:

- **Frozen convolutions.** PyTorch saves a convolution's input whenever its output needs a
  gradient. With the weight and bias frozen, only the input's gradient is wanted, and that needs
  the weight alone (pytorch/pytorch#133566; a frozen ``nn.Linear`` already skips the input). Under LoRA every convolution of a UNet is frozen, so each ResNet block keeps two
  full-size activations (its convolutions' inputs) that backward never reads. The lean
  convolution keeps only the input's shape and gets the input's gradient from
  ``torch.nn.grad.conv*d_input``, the transposed convolution autograd would run too.
- **Frozen LayerNorm and GroupNorm** keep their *output* instead of their input. Their consumer
  keeps that output anyway (LoRA's ``lora_A`` the attention's input, a ResNet's SiLU the norm's
  output), while the input (the residual stream) is kept by nobody else; backward remakes the
  input from the output, ``x = (y − β)/γ / rstd + mean`` (the in-place activated batch-norm
  trick, Rota Bulò et al., 2018), and runs PyTorch's own norm backward on it. Their gradients equal PyTorch's to rounding, not bit for bit. Taken without
  autocast only (under autocast the consumer keeps its own low-precision copy, so nothing is
  saved) and only where every ``|γ| > 1e-6``.
- **GEGLU** (diffusers' gated feed-forward in SD1.5/SDXL transformer blocks:
  ``h ⊙ gelu(g)`` with ``[h, g] = proj(x)``). Autograd keeps ``gelu(g)`` for the product's
  backward beside ``h`` and ``g``; the lean one remakes ``gelu(g)`` in backward from the ``g`` it
  keeps anyway. ``gelu(g)`` is half the projection's width: on the SDXL architecture at 1/8
  width it was 14 % of everything a LoRA step keeps for backward (the convolutions' inputs 4 %).

:func:`lean_layers` switches a model's layers in place (their class, not their parameters).
Trainable convolutions and norms (full fine-tuning, LoRA on a convolution's weight) and no-grad
passes take PyTorch's path. The convolutions' and GEGLU's gradients are bit-identical: the same
kernels on the same inputs.
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


# ---------------------------------------------------------------------------------- norms
class _OutputSavingNorm(torch.autograd.Function):
    """A frozen affine LayerNorm (``groups=None``) or GroupNorm that saves its output, not its input.

    Backward remakes the input from the output and the per-row (per-group) statistics,
    ``x = (y − β)/γ / rstd + mean``, then runs PyTorch's own norm backward kernel on it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, groups):
        if groups is None:
            y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), weight, bias, eps)
        else:
            n, c = x.shape[:2]
            y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, x[0, 0].numel(), groups, eps)
        ctx.groups = groups
        ctx.save_for_backward(y, mean, rstd, weight, bias)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, mean, rstd, weight, bias = ctx.saved_tensors
        groups = ctx.groups
        # γ and β broadcast over the last dim (LayerNorm) or the channel dim (GroupNorm).
        shape = (-1,) if groups is None else (1, -1) + (1,) * (y.dim() - 2)
        x = (y - bias.view(shape)) if bias is not None else y.clone()
        x.div_(weight.view(shape))
        if groups is None:
            x.div_(rstd).add_(mean)
            dx, _, _ = torch.ops.aten.native_layer_norm_backward(grad, x, (x.shape[-1],), mean, rstd, weight, bias,
                                                                 [True, False, False])
        else:
            n, c = x.shape[:2]
            flat = x.view(n, groups, -1)
            flat.div_(rstd.view(n, groups, 1)).add_(mean.view(n, groups, 1))
            dx, _, _ = torch.ops.aten.native_group_norm_backward(grad.contiguous(), x, mean, rstd, weight, n, c,
                                                                 x[0, 0].numel(), groups, [True, False, False])
        return dx, None, None, None, None


class _LeanNorm:
    """Mixed into ``nn.LayerNorm`` / ``nn.GroupNorm``: the frozen case goes through
    :class:`_OutputSavingNorm`. ``_lean_ok`` (set by :func:`lean_layers`): every ``|γ| > 1e-6``."""

    _lean_ok = False

    def _lean(self, x) -> bool:
        weight, bias = self.weight, self.bias
        return (self._lean_ok and weight is not None and not weight.requires_grad
                and (bias is None or not bias.requires_grad) and x.requires_grad and torch.is_grad_enabled()
                and not torch.is_autocast_enabled(x.device.type))


class LeanLayerNorm(_LeanNorm, nn.LayerNorm):
    def forward(self, x):
        if len(self.normalized_shape) == 1 and self._lean(x):
            return _OutputSavingNorm.apply(x, self.weight, self.bias, self.eps, None)
        return super().forward(x)


class LeanGroupNorm(_LeanNorm, nn.GroupNorm):
    def forward(self, x):
        if x.dim() >= 3 and self._lean(x):
            return _OutputSavingNorm.apply(x, self.weight, self.bias, self.eps, self.num_groups)
        return super().forward(x)


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
    return {nn.Conv1d: LeanConv1d, nn.Conv2d: LeanConv2d, nn.Conv3d: LeanConv3d, geglu: lean_geglu,
            nn.LayerNorm: LeanLayerNorm, nn.GroupNorm: LeanGroupNorm}


def lean_layers(model: nn.Module) -> int:
    """Make ``model``'s plain convolutions, norms and diffusers ``GEGLU`` layers keep less for backward.

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
            if issubclass(lean, _LeanNorm) and module.weight is not None:
                with torch.no_grad():  # the weights are the loaded ones; a frozen norm keeps them
                    module._lean_ok = bool(module.weight.abs().min() > 1e-6)
            changed += 1
    return changed
