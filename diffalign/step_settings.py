"""Each preference step's settings and where a training config holds them: the block beside
``objective:`` that the step names (``rollout:`` for the sampling steps, ``inversion:`` for the
inversion step), checked against the step's settings dataclass and filled in with its defaults
(overridden by the objective's ``step_defaults``) when the config loads, so ``check-config``
refuses a bad value before any weights load and a saved ``config.yaml`` shows every value used.

Until diffalign 0.2 the same keys are still read from the ``objective:`` block, where they were
first written (``objective.steps`` for SPO, ``objective.inversion`` for InPO), with a warning that
names the new key.

This module sits below the config loader and the steps (it imports neither): the loader asks it
to complete a config, the steps take their settings from it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Literal

from diffalign.inversion import InversionConfig
from diffalign.objectives import OBJECTIVES, describe_config
from diffalign.typed_config import build_checked, to_dict

LOG_PROB_REDUCTIONS = ("mean", "sum")


@dataclass
class SPORollout:
    """SPO's ``rollout:`` block. Defaults: the official SD1.5 launcher
    (``spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10.py``).

    Attributes:
        steps: sampler steps (DDIM, 20).
        eta: sampler η (1 = DDPM posterior variance).
        guidance: classifier-free guidance of the sampler and of both log-probabilities.
        candidates: ``k``, candidates drawn at each branching step (SDXL launcher: 2).
        threshold: a pair is kept when ``softmax([S_b, S_w])_0 − softmax(...)_1 > threshold``,
            i.e. ``S_b − S_w > 2·artanh(threshold)`` (SDXL launcher: 0.4).
        branch_from: the first step that branches (4 of 20: t ≤ 750, the paper's κ). Each pair is
            one step long: the official SDXL sampler's ``num_inner_step = 3`` (MSPO, 4-step
            branches) has no counterpart (audit in :mod:`diffalign.objectives.spo`).
        max_pairs_per_prompt: cap on the pairs of one prompt's chain that enter the loss (``None``:
            all, as the official code trains on every kept pair); memory grows with it.
        preference_model: folder of a step-aware preference model
            (:class:`~diffalign.rewards.step_aware.StepAwarePreferenceModel`, ``save_pretrained``).
        preference_checkpoint: or the authors' released ``.bin``, with ``preference_model`` the
            CLIP folder it was fine-tuned from.
        log_prob_reduction: ``mean`` over latent elements (official) or ``sum``.
    """

    steps: int = 20
    eta: float = 1.0
    guidance: float = 5.0
    candidates: int = 4
    threshold: float = 0.3
    branch_from: int = 4
    max_pairs_per_prompt: int | None = None
    preference_model: str | None = None
    preference_checkpoint: str | None = None
    log_prob_reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self):
        if not (isinstance(self.candidates, int) and self.candidates >= 2):
            raise ValueError(f"candidates must be an integer ≥ 2, got {self.candidates!r}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if not (isinstance(self.steps, int) and 1 <= self.branch_from < self.steps):
            raise ValueError(f"need 1 ≤ branch_from < steps, got branch_from={self.branch_from}, steps={self.steps}")
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0 (SPO needs a stochastic sampler), got {self.eta}")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ValueError(f"max_pairs_per_prompt must be ≥ 1 or null, got {self.max_pairs_per_prompt}")
        if self.log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {', '.join(LOG_PROB_REDUCTIONS)}")

    @property
    def score_gap(self) -> float:
        """The score difference the threshold asks for: ``2·artanh(threshold)``."""
        return 2 * math.atanh(self.threshold)


@dataclass
class DRORollout:
    """Diffusion-DRO's ``rollout:`` block. Defaults: the paper (App. A.2) and the official ``train.py``.

    Attributes:
        steps: rollout sampler steps (20; the official DPM-Solver++, a second-order multistep
            solver, here DDIM / Euler with η = 0: the same ODE, slightly different states).
        guidance: rollout guidance (1: none, as in the paper; rollouts are deliberately weak).
        perturb: move each rollout time up by a random fraction of its gap to the time before
            (the official "perturbed timesteps", 950…0 by 50 plus U{0..49}), one draw per prompt;
            on the family's DDIM times (SD1.5: 951…1), so within one index of the official grid.
        refresh_every: ``M``, optimiser updates between snapshot refreshes.
    """

    steps: int = 20
    guidance: float = 1.0
    perturb: bool = True
    refresh_every: int = 1

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be ≥ 0, got {self.guidance}")
        if not (isinstance(self.refresh_every, int) and self.refresh_every >= 1):
            raise ValueError(f"refresh_every must be an integer ≥ 1, got {self.refresh_every!r}")


STEP_SETTINGS: dict[str, tuple[str, type]] = {"spo": ("rollout", SPORollout),
                                                "diffusion_dro": ("rollout", DRORollout),
                                                "inversion": ("inversion", InversionConfig)}
"""Step name → ``(config block, settings dataclass)``; a step not listed has no settings."""

STEP_BLOCKS = ("rollout", "inversion")
"""The config keys a step's settings may live under."""


def _step_of(spec):
    """``(objective class, (block, settings class) or None)`` of an objective spec; ``(None, None)``
    when the spec names no known objective."""
    if not isinstance(spec, dict) or spec.get("name") not in OBJECTIVES:
        return None, None
    objective = OBJECTIVES[spec["name"]]
    return objective, STEP_SETTINGS.get(objective.step)


def move_step_keys(data: dict) -> dict:
    """``data`` with the step settings written under ``objective:`` moved to the step's block
    (a key already in the block wins), and a ``FutureWarning`` naming each new key."""
    objective, settings = _step_of(data.get("objective"))
    if settings is None:
        return data
    (key, cls), spec = settings, dict(data["objective"])
    fields = {f.name for f in dataclasses.fields(cls)}
    moved, old = {}, []
    if isinstance(spec.get(key), dict) and key not in fields:  # objective.inversion: {steps: ...}
        moved.update(spec.pop(key))
        old.append((f"objective.{key}", key))
    for name in [n for n in spec if n in fields]:
        moved[name] = spec.pop(name)
        old.append((f"objective.{name}", f"{key}.{name}"))
    if not moved:
        return data
    warnings.warn("; ".join(f"{was} is now {now}" for was, now in old) + f" (the {objective.step} step's settings live in "
                  f"the {key}: block beside objective:); the old keys stop working in diffalign 0.2", FutureWarning,
                  stacklevel=2)
    block = data.get(key)
    return {**data, "objective": spec, key: {**moved, **(block if isinstance(block, dict) else {})}}


def complete_step_blocks(kwargs: dict, errors: list) -> None:
    """Check the step blocks of a loaded config against its objective's step: the step's block
    built and filled in (``kwargs[key]`` becomes the complete mapping), any other block refused."""
    objective, settings = _step_of(kwargs.get("objective"))
    if objective is None:
        return
    own, cls = settings or (None, None)
    for key in STEP_BLOCKS:
        value = kwargs.get(key)
        if key != own:
            if value is not None:
                where = f"; its settings go in {own}:" if own else ""
                errors.append((key, f"{objective.name} (its {objective.step} step) takes no {key} block{where}"))
            continue
        first = len(errors)
        try:
            built = build_checked(cls, {**objective.step_defaults, **(value or {})}, key, errors)
        except (TypeError, ValueError) as err:  # the settings' own checks (__post_init__)
            errors.append((key, f"{objective.name}: {err}"))
            built = None
        if built is None:
            accepted = f"{key} accepts: {describe_config(cls)}"
            errors[first:] = [(k, f"{message}; {accepted}") for k, message in errors[first:]]
        else:
            kwargs[key] = to_dict(built)


def step_settings(config, objective):
    """The settings of ``objective``'s step in a loaded config (its block built), or ``None``."""
    if objective.step not in STEP_SETTINGS:
        return None
    key, cls = STEP_SETTINGS[objective.step]
    return cls(**{**objective.step_defaults, **(getattr(config, key) or {})})


def prompt_dropout(config, objective) -> float:
    """The share of groups trained with the empty prompt: the config's ``prompt_dropout``, or the
    objective's official value when it is unset."""
    value = getattr(config, "prompt_dropout", None)
    return float(objective.prompt_dropout if value is None else value)


__all__ = ["DRORollout", "LOG_PROB_REDUCTIONS", "SPORollout", "STEP_BLOCKS", "STEP_SETTINGS", "complete_step_blocks",
           "move_step_keys", "prompt_dropout", "step_settings"]
