"""Model families: the only code that knows how SD1.5/2.1, SDXL, SD3/3.5, FLUX.1, FLUX.2, Qwen-Image and
Wan 2.1/2.2 differ.

``FAMILIES`` maps the config name to its class; :func:`load` detects the family of a checkpoint
from its ``model_index.json`` and scheduler config. What a family offers the rest of diffalign is
written down in :class:`~diffalign.families.interface.FamilyInterface` (every member, with
shapes); what a new family fills in is :class:`~diffalign.families.hooks.FamilyHooks`, and
``tests/families/test_interface.py`` checks every registered family against both. Code outside
this package asks the family (or ``FAMILIES[name]``) for any family fact, never a family name.

Example:
    >>> family = load("stabilityai/stable-diffusion-xl-base-1.0")   # doctest: +SKIP
    >>> cond = family.encode_prompts(["a cat"], group_size=2)        # [1, 2, ...]
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

from diffalign.families.base import Conditioning, FamilyError, ModelFamily, read_model_index
from diffalign.families.flow import FlowMatching
from diffalign.families.flux import FluxFamily
from diffalign.families.flux2 import Flux2Family
from diffalign.families.interface import FamilyInterface
from diffalign.families.qwen_image import QwenImageFamily
from diffalign.families.sd import SDFamily
from diffalign.families.sd3 import SD3Family
from diffalign.families.sdxl import SDXLFamily
from diffalign.families.wan import WanFamily

FAMILIES: dict[str, type[ModelFamily]] = {"sd": SDFamily, "sdxl": SDXLFamily, "sd3": SD3Family, "flux": FluxFamily,
                                          "flux2": Flux2Family, "qwen_image": QwenImageFamily, "wan": WanFamily}

BENCHMARK_FAMILY = "sdxl"
"""The family the speed benchmarks measure unless told otherwise: the peer they are measured
against, diffusers' Diffusion-DPO research script, trains SDXL."""

_BY_PIPELINE = {cls.pipeline_class: name for name, cls in FAMILIES.items()}
_SUPPORTED = "; ".join(f"{name} ({cls.pipeline_class})" for name, cls in FAMILIES.items())


@dataclass(frozen=True)
class Detected:
    """What :func:`detect_family` found: the family name and its prediction type
    (``"epsilon"``, ``"v_prediction"`` or ``"flow"``)."""

    family: str
    prediction_type: str


def _component_class(index: dict, name: str) -> str | None:
    entry = index.get(name)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def _family_from_index(index: dict) -> str | None:
    """By pipeline class first, then by components (so e.g. an img2img folder of the same
    weights still loads)."""
    name = _BY_PIPELINE.get(index.get("_class_name"))
    if name:
        return name
    if _component_class(index, "transformer") == "SD3Transformer2DModel":
        return "sd3"
    if _component_class(index, "transformer") == "FluxTransformer2DModel":
        return "flux"
    if _component_class(index, "transformer") == "Flux2Transformer2DModel":
        return "flux2"
    if _component_class(index, "transformer") == "QwenImageTransformer2DModel":
        return "qwen_image"
    if _component_class(index, "transformer") == "WanTransformer3DModel":
        return "wan"
    if _component_class(index, "unet") == "UNet2DConditionModel" and _component_class(index, "text_encoder"):
        return "sdxl" if _component_class(index, "text_encoder_2") else "sd"
    return None


def detect_family(path: str | Path, revision: str | None = None) -> Detected:
    """Detect the family of a diffusers pipeline folder or hub id.

    Raises:
        FamilyError: not a pipeline, an unsupported pipeline, or an unsupported scheduler.
    """
    index = read_model_index(path, revision)
    name = _family_from_index(index)
    if name is None:
        raise FamilyError(
            f"{path} holds a {index.get('_class_name', 'pipeline of unknown class')}, which diffalign "
            f"does not support. Supported families: {_SUPPORTED}."
        )
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.load_config(str(path), subfolder="scheduler", revision=revision)
    scheduler_class = scheduler.get("_class_name", "")
    if issubclass(FAMILIES[name], FlowMatching):
        flow = "FlowMatch" in scheduler_class or (scheduler.get("use_flow_sigmas") and
                                                  scheduler.get("prediction_type") == "flow_prediction")
        if not flow:
            raise FamilyError(f"{path}: a {name} transformer with a {scheduler_class}; expected a flow-matching "
                              "scheduler (FlowMatchEulerDiscreteScheduler, or UniPC with use_flow_sigmas)")
        return Detected(name, "flow")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise FamilyError(f"{path}: prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    return Detected(name, prediction)


def load(path: str | Path, family: str | None = None, **kwargs) -> ModelFamily:
    """Load a checkpoint as its model family.

    Args:
        path: diffusers pipeline folder or hub id.
        family: force a family name instead of detecting it.
        kwargs: passed to the family's ``from_pretrained`` (dtype, device, revision,
            load_vae, load_text_encoders, attention, time_sampling, loss_weighting, ...).
    """
    if family is None:
        family = detect_family(path, kwargs.get("revision")).family
    if family not in FAMILIES:
        raise FamilyError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    cls = FAMILIES[family]
    return cls.from_pretrained(path, **_drop_inapplicable(cls, kwargs))


# Options that only some families take, with their defaults: a config may carry them for any
# model, so they are dropped where they do not apply, unless the user changed them.
_FAMILY_SPECIFIC = {"snr_gamma": 5.0, "use_t5": True, "max_sequence_length": None, "embedded_guidance": 3.5,
                    "experts": None}


def _drop_inapplicable(cls: type[ModelFamily], kwargs: dict) -> dict:
    accepted = {p for klass in cls.__mro__ for p in inspect.signature(klass.__init__).parameters}
    kept = dict(kwargs)
    for key, default in _FAMILY_SPECIFIC.items():
        if key in kept and key not in accepted:
            if kept.pop(key) != default:
                raise FamilyError(f"option {key} does not apply to the {cls.name} family")
    return kept


__all__ = [
    "BENCHMARK_FAMILY", "FAMILIES", "Conditioning", "Detected", "FamilyError", "FamilyInterface", "Flux2Family", "FluxFamily",
    "ModelFamily", "QwenImageFamily", "SDFamily", "SDXLFamily", "SD3Family", "WanFamily", "detect_family", "load",
]
