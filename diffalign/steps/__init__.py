"""Preference steps: how a batch becomes the terms an objective takes (docs/architecture.md, "Step").

``STEPS`` maps the name an objective gives (``Objective.step``) to its class.
"""

from __future__ import annotations

from diffalign.steps.base import PreferenceStep, group_generators
from diffalign.steps.denoising import DenoisingStep
from diffalign.steps.diffusion_dro import DiffusionDROStep
from diffalign.steps.inversion import InversionStep
from diffalign.steps.nft import NFTStep
from diffalign.steps.online import OnlineStep
from diffalign.steps.rollout import RolloutStep
from diffalign.steps.spo import SPOStep

STEPS: dict[str, type[PreferenceStep]] = {"denoising": DenoisingStep, "inversion": InversionStep, "spo": SPOStep,
                                          "diffusion_dro": DiffusionDROStep, "online": OnlineStep,
                                          "nft": NFTStep}

__all__ = ["STEPS", "DenoisingStep", "DiffusionDROStep", "InversionStep", "NFTStep", "OnlineStep", "PreferenceStep", "RolloutStep", "SPOStep",
           "group_generators"]
