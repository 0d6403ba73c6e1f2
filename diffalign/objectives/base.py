"""What every objective takes and returns (docs/architecture.md, "Objective").

An objective is pure tensor maths over per-image denoising errors: it never sees a model, a
scheduler or diffusers. The trainer computes the errors with the model family and hands them
over as :class:`PreferenceTerms`.

Shapes: ``B`` groups (prompts) per batch, ``K`` images per group ordered best first
(``K = 2`` for pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import DiffalignError

METRIC_NAMES = ("loss", "implicit_acc", "margin", "err_w", "err_l", "ref_gap")
"""Fixed metric names, logged under ``train/<name>``:

- ``implicit_acc``: fraction of pairs whose preference margin is positive (the model's implicit
  reward ranks the preferred image first);
- ``margin``: mean of the objective's preference margin (the argument of its log-sigmoid);
- ``err_w`` / ``err_l``: mean policy error of the preferred / rejected images;
- ``ref_gap``: mean ``ref_err_w − ref_err_l`` (reference objectives only).
Objectives may add their own names beside these.
"""


class ObjectiveDataError(DiffalignError, ValueError):
    """An objective given data it cannot use (pairs for a ranked objective, no captions, ...)."""


@dataclass(frozen=True)
class PreferenceTerms:
    """Everything an objective may need for one batch.

    Attributes:
        policy_err: ``[B, K]`` weighted denoising error of the policy (carries the gradient).
        ref_err: ``[B, K]`` the same for the reference model (no gradient), or ``None``.
        t: ``[B]`` noise level in [0, 1] shared by each group.
        ranks: ``[B, K]`` 0 = best; equal ranks are ties. ``None`` means "best first, no ties".
        scores: ``[B, K]`` reward scores (higher is better), or ``None``.
        policy_logp, ref_logp: ``[B, K]`` log-probability of each image's sampler step under the
            policy (with gradient) and the reference, less the constants they share (SPO: a
            step's pairs; :func:`diffalign.solver.step_log_prob`), in place of the errors.
        weights: ``[B]`` weight of each group in the mean, or ``None`` (all 1). A sampling step
            that found nothing to train on gives weight 0, so the loss is 0 but has a gradient
            graph (every process must run backward).
        old_logp: ``[B, K]`` online RL: the log-probability of each step recorded when it was
            sampled (never recomputed), the denominator of the policy ratio.
        advantages: ``[B, K]`` online RL: each sample's advantage.
        kl: ``[B, K]`` online RL: the KL term of each step against the reference (no reduction).
        policy_x0, old_x0: ``[N, *latent]`` DiffusionNFT: the clean sample each model predicts at a
            re-noised sample (the policy's with gradient; the old weights' without).
        x0: ``[N, *latent]`` DiffusionNFT: the clean samples the rollouts ended at.
    """

    policy_err: Tensor | None = None
    ref_err: Tensor | None = None
    t: Tensor | None = None
    ranks: Tensor | None = None
    scores: Tensor | None = None
    policy_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    weights: Tensor | None = None
    old_logp: Tensor | None = None
    advantages: Tensor | None = None
    kl: Tensor | None = None
    policy_x0: Tensor | None = None
    old_x0: Tensor | None = None
    x0: Tensor | None = None


def weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``[B]`` values, weighted by ``terms.weights`` when given (all-zero weights: 0)."""
    if weights is None:
        return values.mean()
    weights = weights.to(values)
    return (values * weights).sum() / weights.sum().clamp(min=1e-12) if weights.any() else (values * weights).sum()


def require_terms(name: str, terms: PreferenceTerms, keys: tuple[str, ...], step: str) -> None:
    """Fail naming the first of ``keys`` that ``terms`` lacks (the ``step`` step makes them)."""
    for key in keys:
        if getattr(terms, key) is None:
            raise ValueError(f"{name} needs {key} in its terms (the {step} step makes them)")


def add_kl(name: str, loss: Tensor, metrics: dict, terms: PreferenceTerms, weight: float, key: str) -> Tensor:
    """``loss + weight·mean(terms.kl)`` (weighted by ``terms.weights``, in ``loss``'s dtype), the KL
    logged in ``metrics["kl"]``; ``loss`` as it is when ``weight`` (the config's ``key``) is 0."""
    if weight <= 0:
        return loss
    if terms.kl is None:
        raise ValueError(f"{name} with {key} > 0 needs the KL term (kl) in its terms")
    kl = weighted_mean(terms.kl.to(loss.dtype).flatten(), terms.weights)
    metrics["kl"] = kl.detach()
    return loss + weight * kl


@dataclass
class ObjectiveOutput:
    """``loss``: scalar to minimise; ``metrics``: detached scalars with :data:`METRIC_NAMES`."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class of every objective.

    Class attributes an objective sets:
        name: config key, e.g. ``"diffusion_dpo"``.
        Config: its config dataclass (defaults from the paper).
        needs_reference: whether the trainer must compute ``ref_err``.
        min_group_size / max_group_size: the ``K`` it accepts (``None``: no upper bound).
        needs_captions: conditions each image on its own caption (DCPO); the others condition
            every image of a group on the prompt.
        needs_ranks: needs ranks or scores in the data (RankDPO).
        needs_scores: needs reward scores in the data (SmPO).
        per_image: what its terms carry per image: ``"err"`` (``policy_err``/``ref_err``,
            denoising errors: lower is better), ``"logp"`` (``policy_logp``/``ref_logp``, a
            sampler step's log-probabilities: higher is likelier; SPO, the GRPO family) or
            ``"x0"`` (``policy_x0``/``old_x0``, predicted clean samples; DiffusionNFT).
        step: the preference step that makes its terms (:data:`diffalign.steps.STEPS`):
            ``"denoising"`` (forward-noised latents), ``"inversion"`` (inverted latents), or a
            sampling step (``"spo"``, ``"diffusion_dro"``: terms made from the policy's rollouts;
            ``"online"``, ``"nft"``: collect, then several updates).
        step_defaults: this objective's defaults for its step's settings block (``inversion:``
            or ``rollout:`` beside ``objective:``) where they differ from the step's own.
        prompt_dropout: the share of groups its official code trains with the empty prompt
            (``--proportion_empty_prompts``), the default of the config's ``prompt_dropout``;
            0 where diffalign does not follow the official code there (the module docstring says so).

    These attributes are the one statement of what an objective accepts; ``diffalign train``
    and ``diffalign check-config`` check them against the dataset before any model loads.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_reference: ClassVar[bool] = True
    min_group_size: ClassVar[int] = 2
    max_group_size: ClassVar[int | None] = 2
    needs_captions: ClassVar[bool] = False
    needs_ranks: ClassVar[bool] = False
    needs_scores: ClassVar[bool] = False
    per_image: ClassVar[str] = "err"
    step: ClassVar[str] = "denoising"
    step_defaults: ClassVar[dict] = {}
    prompt_dropout: ClassVar[float] = 0.0

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def loss(self, terms: PreferenceTerms) -> ObjectiveOutput:
        raise NotImplementedError

    @classmethod
    def check_data(cls, group_size: int, has_captions: bool, has_ranks: bool, has_scores: bool = False) -> None:
        """Fail with a message naming the mismatch between this objective and a dataset.

        Args:
            group_size: the dataset's ``K`` (0: a prompt-only dataset, which only an online
                objective, ``min_group_size = 0``, accepts: it samples its own images).
            has_captions: every row has per-image captions.
            has_ranks: every row has ranks or scores.
            has_scores: every row has reward scores.
        """
        if group_size == 0 and cls.min_group_size > 0:
            raise ObjectiveDataError(cls._prompts_only_message())
        if group_size < cls.min_group_size or (cls.max_group_size is not None and group_size > cls.max_group_size):
            needs = cls._needs()
            kind = ("one image per prompt (K = 1, an expert dataset)" if group_size == 1
                    else "pairs" if group_size == 2 else f"groups of K = {group_size}")
            if cls.max_group_size == 1:  # an objective of expert images, given groups
                hint = " (make an expert dataset from it with `diffalign build experts --from DATASET --out OUT`)"
            elif group_size == 1:
                hint = (" (diffusion_dro is the objective that trains on one image per prompt; "
                        f"give {cls.name} pairs or groups)")
            else:
                hint = " (use rank_dpo for ranked groups, or build pairs)" if group_size > 2 else ""
            raise ObjectiveDataError(f"{cls.name} needs {needs}; the dataset has {kind}{hint}")
        if cls.needs_captions and not has_captions:
            raise ObjectiveDataError(
                f"{cls.name} needs a caption per image (the dataset's 'captions' column is empty); "
                "write them with `diffalign build dual-captions`"
            )
        if cls.needs_ranks and not has_ranks:
            raise ObjectiveDataError(f"{cls.name} needs ranks or scores per image; the dataset has neither")
        if cls.needs_scores and not has_scores:
            raise ObjectiveDataError(
                f"{cls.name} needs a reward score per image (the dataset's 'scores' column is empty); add them with "
                "`diffalign score --images DATASET --reward pickscore --into OUT` (see `diffalign score --help`)"
            )


    @classmethod
    def _needs(cls) -> str:
        """The images per prompt this objective needs, in words (``K = 2 images per prompt``)."""
        if cls.max_group_size == 1:
            return "one image per prompt (K = 1)"
        wanted = (f"K = {cls.min_group_size}" if cls.min_group_size == cls.max_group_size
                  else f"K ≥ {cls.min_group_size}" if cls.max_group_size is None
                  else f"{cls.min_group_size} ≤ K ≤ {cls.max_group_size}")
        return f"{wanted} images per prompt"

    @classmethod
    def _prompts_only_message(cls) -> str:
        """Why a prompt-only dataset (``K = 0``) cannot train this objective, and the two ways out:
        an online objective (those registered with ``min_group_size = 0``), or images built for
        the prompts."""
        from . import OBJECTIVES  # lazily: the registry imports this module

        online = sorted(name for name, other in OBJECTIVES.items() if other.min_group_size == 0)
        train = f"train an online objective on it ({', '.join(online) or 'none is registered'})"
        if cls.max_group_size == 1:
            build = ("or generate images for its prompts (`diffalign build synthetic DATASET --out OUT ...`) and take "
                     "the best of each (`diffalign build experts --from OUT --out EXPERTS`)")
        else:
            pairs = " --pairs best-worst" if cls.max_group_size == 2 else ""
            build = ("or build scored images for its prompts with `diffalign build synthetic DATASET --out OUT "
                     f"--generator MODEL --reward REWARD{pairs}`")
        return f"{cls.name} needs {cls._needs()}; the dataset holds prompts only (K = 0): {train}, {build}"


def pair_metrics(policy_err: Tensor, ref_err: Tensor | None, margin: Tensor, loss: Tensor) -> dict[str, Tensor]:
    """The fixed metrics for a pairwise objective (column 0 preferred, column 1 rejected).

    Args:
        policy_err, ref_err: ``[B, K]``; margin: ``[B]`` the objective's preference margin.
    """
    metrics = {
        "loss": loss.detach(),
        "implicit_acc": (margin > 0).float().mean().detach(),
        "margin": margin.mean().detach(),
        "err_w": policy_err[:, 0].mean().detach(),
        "err_l": policy_err[:, 1].mean().detach(),
    }
    if ref_err is not None:
        metrics["ref_gap"] = (ref_err[:, 0] - ref_err[:, 1]).mean().detach()
    return metrics


def require_reference(name: str, terms: PreferenceTerms, per_image: str = "err") -> Tensor:
    """``terms.ref_<per_image>``, or the error that says the trainer did not compute it."""
    ref = getattr(terms, f"ref_{per_image}")
    if ref is None:
        raise ValueError(f"{name} needs the reference model's ref_{per_image}; the trainer did not compute it")
    return ref


def prepare_terms(name: str, terms: PreferenceTerms, min_k: int = 2, max_k: int | None = None,
                  per_image: str = "err") -> PreferenceTerms:
    """Check the shapes of ``terms`` and return them ready for an objective's maths.

    ``policy_<per_image>`` (``per_image``: ``"err"``, or ``"logp"`` for step log-probabilities)
    must be ``[B, K]`` with ``min_k ≤ K ≤ max_k`` and ``ref_<per_image>``, ``ranks``, ``scores``
    must match it. The reference's is detached, so no objective backpropagates into the
    reference, and half-precision values are upcast to float32 (``β · Δerr`` needs the bits).
    """
    policy_key, ref_key = f"policy_{per_image}", f"ref_{per_image}"
    policy = getattr(terms, policy_key)
    if policy is None or policy.ndim != 2:
        shape = None if policy is None else tuple(policy.shape)
        raise ValueError(f"{name}: {policy_key} must be [B, K], got {shape}")
    k = policy.shape[1]
    if k < min_k or (max_k is not None and k > max_k):
        wanted = (f"K = {min_k}" if min_k == max_k else f"K ≥ {min_k}" if max_k is None
                  else f"{min_k} ≤ K ≤ {max_k}")
        raise ObjectiveDataError(f"{name} needs {wanted} images per group; got K = {k}")
    for key in (ref_key, "ranks", "scores"):
        value = getattr(terms, key)
        if value is not None and tuple(value.shape) != tuple(policy.shape):
            raise ValueError(f"{name}: {key} has shape {tuple(value.shape)}, {policy_key} {tuple(policy.shape)}")

    def upcast(x: Tensor) -> Tensor:
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    ref = getattr(terms, ref_key)
    ref = None if ref is None else upcast(ref.detach())
    return replace(terms, **{policy_key: upcast(policy), ref_key: ref})


__all__ = ["METRIC_NAMES", "Objective", "ObjectiveDataError", "ObjectiveOutput", "PreferenceTerms", "add_kl",
           "pair_metrics", "prepare_terms", "require_reference", "require_terms", "weighted_mean"]
