"""The template hooks a new family fills, and the check that a family meets the interface.

:class:`~diffalign.families.base.ModelFamily` turns these few hooks into the whole of
:class:`~diffalign.families.interface.FamilyInterface`: it flattens ``[B, K, ...]`` groups to
``[N = B·K, ...]`` and calls the ``_flat`` hooks, dedupes prompts before ``_encode_text``, maps
sampled training indices through ``_time_from_index``. The base leaves each hook unset (class
facts) or raising ``NotImplementedError`` (methods); :func:`unfilled_hooks` names those a family
class left so. ``FlowMatching`` fills the noise hooks for rectified-flow families.

Shapes as in :mod:`diffalign.families.interface`; ``N`` is a flat batch of items.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, ClassVar, Protocol

from diffalign.families.interface import FamilyInterface

if TYPE_CHECKING:
    from torch import Tensor

    from diffalign.families.conditioning import Conditioning


class FamilyHooks(Protocol):
    """What a new family writes; everything else has a working default."""

    name: ClassVar[str]
    pipeline_class: ClassVar[str]
    denoiser_name: ClassVar[str]
    text_components: ClassVar[tuple[str, ...]]
    default_time_sampling: ClassVar[str]
    loss_weightings: ClassVar[tuple[str, ...]]

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """``N`` unique strings → ``(embeds [N, L, D], pooled [N, P] or None)`` with the pipeline's
        own ``encode_prompt``."""

    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """Call ``model`` on ``noisy [N, *latent]`` at ``t [N]`` with flat ``cond [N, ...]``, in
        the dtype of the module called (:func:`~diffalign.families.base.input_dtype`): ``[N, *latent]``."""

    def _time_from_index(self, index: Tensor) -> Tensor:
        """Scheduler training index ``[N]`` (``0 … N_train − 1``) → normalised time ``[N]``."""

    def _add_noise_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process of ``x0, noise [N, *latent]`` at ``t [N]``: ``[N, *latent]``."""

    def _target_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The denoiser's training target for ``[N, *latent]`` at ``t [N]``."""

    def noise_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_t, s_t)`` with ``x_t = a_t·x0 + s_t·ε``, each ``[N]`` float32."""

    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` falling times of the family's sampler, ending at 0 (for latents of
        ``latent_size`` where the schedule depends on the size)."""

    def inversion_levels(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` rising times of the official inversion grid (InPO/SmPO's ``landing: official``)."""

    def split_prediction(self, pred: Tensor, noisy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, K, *latent]`` prediction at ``t [B]`` → ``(ε̂, x̂0)``."""

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-group weight ``[B]`` for the configured ``loss_weighting``."""


_MISSING = object()


def interface_members(protocol: type = FamilyInterface) -> dict[str, str]:
    """Each member of ``protocol`` and its kind: ``"class attribute"``, ``"attribute"`` (set on a
    loaded family), ``"property"``, ``"classmethod"`` or ``"method"``; read from the class itself
    so the written interface is the one list."""
    members = {}
    for name, hint in protocol.__annotations__.items():
        members[name] = "class attribute" if str(hint).startswith("ClassVar") else "attribute"
    for name, value in vars(protocol).items():
        if name.startswith("__") or name in members or not isinstance(
                value, (classmethod, property, functools.cached_property)) and not inspect.isfunction(value):
            continue
        members[name] = ("classmethod" if isinstance(value, classmethod) else
                         "property" if isinstance(value, (property, functools.cached_property)) else "method")
    return members


def missing_members(family, protocol: type = FamilyInterface) -> list[str]:
    """What ``family`` (a family class, or a loaded family to check its attributes too) lacks of
    ``protocol``, as ``"name (kind)"``; empty when it has everything."""
    cls = family if isinstance(family, type) else type(family)
    problems = []
    for name, kind in interface_members(protocol).items():
        static = inspect.getattr_static(cls, name, _MISSING)
        if kind == "attribute":
            ok = isinstance(family, type) or getattr(family, name, _MISSING) is not _MISSING
        elif kind == "class attribute":
            ok = static is not _MISSING and not callable(static)
        elif kind == "classmethod":
            ok = isinstance(static, (classmethod, staticmethod))
        elif kind == "property":
            ok = isinstance(static, (property, functools.cached_property))
        else:
            ok = inspect.isfunction(static)
        if not ok:
            problems.append(f"{name} ({kind})")
    return problems


TEMPLATE_HOOKS = tuple(interface_members(FamilyHooks))
"""The members of :class:`FamilyHooks`, in its order."""


def unfilled_hooks(cls: type) -> list[str]:
    """The :data:`TEMPLATE_HOOKS` a family class leaves to the base (unset, or its stub that
    raises ``NotImplementedError``)."""
    from diffalign.families.base import ModelFamily

    unfilled = []
    for name in TEMPLATE_HOOKS:
        mine = inspect.getattr_static(cls, name, _MISSING)
        if mine is _MISSING or (callable(mine) and mine is inspect.getattr_static(ModelFamily, name, None)):
            unfilled.append(name)
    return unfilled
