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
import warnings

from diffalign.inversion import InversionConfig
from diffalign.objectives import OBJECTIVES, describe_config
from diffalign.rollout_settings import (
    LOG_PROB_REDUCTIONS,
    NOISE_RULES,
    TRAINED_STEPS,
    DRORollout,
    OnlineRollout,
    SPORollout,
)
from diffalign.typed_config import build_checked, to_dict

STEP_SETTINGS: dict[str, tuple[str, type]] = {"spo": ("rollout", SPORollout),
                                                "diffusion_dro": ("rollout", DRORollout),
                                                "inversion": ("inversion", InversionConfig),
                                                "online": ("rollout", OnlineRollout),
                                                "nft": ("rollout", OnlineRollout)}
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
    settings = cls(**{**objective.step_defaults, **(getattr(config, key) or {})})
    # A sampling step's image size left unset is the data's (the run samples at the size it trains).
    for name, source in (("resolution", "resolution"), ("frames", "frames")):
        if getattr(settings, name, 0) is None:
            settings = dataclasses.replace(settings, **{name: getattr(config.data, source)})
    return settings


def prompt_dropout(config, objective) -> float:
    """The share of groups trained with the empty prompt: the config's ``prompt_dropout``, or the
    objective's official value when it is unset."""
    value = getattr(config, "prompt_dropout", None)
    return float(objective.prompt_dropout if value is None else value)


__all__ = ["DRORollout", "LOG_PROB_REDUCTIONS", "NOISE_RULES", "OnlineRollout", "TRAINED_STEPS", "SPORollout", "STEP_BLOCKS", "STEP_SETTINGS", "complete_step_blocks",
           "move_step_keys", "prompt_dropout", "step_settings"]
