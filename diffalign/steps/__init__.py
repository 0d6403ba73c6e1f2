"""Preference steps: how a batch becomes the terms an objective takes (DESIGN.md §3.7).

``STEPS`` maps the name an objective gives (``Objective.step``) to its class.
"""

from __future__ import annotations

from diffalign.steps.base import PreferenceStep, group_generators
from diffalign.steps.denoising import DenoisingStep
from diffalign.steps.inversion import InversionStep

STEPS: dict[str, type[PreferenceStep]] = {"denoising": DenoisingStep, "inversion": InversionStep}

__all__ = ["STEPS", "DenoisingStep", "InversionStep", "PreferenceStep", "group_generators"]
