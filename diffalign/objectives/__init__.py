"""Training objectives: pure tensor maths over per-image denoising errors (docs/architecture.md, "Objective").

``OBJECTIVES`` maps each config name to its class; :func:`build_objective` builds one from the
``objective:`` block of a training config (``{"name": ..., **params}``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..typed_config import ConfigError, build_checked, lookup, to_dict
from .base import (
    METRIC_NAMES,
    Objective,
    ObjectiveDataError,
    ObjectiveOutput,
    PreferenceTerms,
    pair_metrics,
    prepare_terms,
    require_reference,
)
from .dcpo import DCPO, DCPOConfig
from .diffusion_dpo import DiffusionDPO, DiffusionDPOConfig
from .diffusion_dro import DiffusionDRO, DiffusionDROConfig
from .diffusion_nft import DiffusionNFT, DiffusionNFTConfig
from .grpo import GRPO, DanceGRPO, DanceGRPOConfig, GRPOConfig
from .inpo import InPO, InPOConfig
from .mapo import MaPO, MaPOConfig
from .rank_dpo import RankDPO, RankDPOConfig
from .sft import SFT, SFTConfig
from .smpo import SmPO, SmPOConfig
from .spo import SPO, SPOConfig

OBJECTIVES = {"diffusion_dpo": DiffusionDPO, "mapo": MaPO, "dcpo": DCPO, "rank_dpo": RankDPO, "sft": SFT,
              "inpo": InPO, "smpo": SmPO, "spo": SPO, "diffusion_dro": DiffusionDRO, "grpo": GRPO,
              "dance_grpo": DanceGRPO, "diffusion_nft": DiffusionNFT}


def objective_class(name: str) -> type[Objective]:
    """The objective class registered as ``name``; a :class:`ConfigError` listing the known ones."""
    return lookup(OBJECTIVES, name, "objective")


def objective_config_dataclass(name: str) -> type:
    """The config dataclass of the objective ``name`` (e.g. :class:`DiffusionDPOConfig`)."""
    return objective_class(name).Config


def describe_config(config_cls: type) -> str:
    """``"beta (float, default 5000.0), ..."``: the keys a config dataclass accepts."""
    parts = []
    for f in dataclasses.fields(config_cls):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):  # a nested block: its keys with this objective's values
            default = "{" + ", ".join(f"{k}: {v!r}" for k, v in dataclasses.asdict(default).items()) + "}"
        else:
            default = repr(default)
        parts.append(f"{f.name} ({kind}, default {default})")
    return ", ".join(parts) or "no keys"


def _configured(spec: Any, key: str, errors: list) -> tuple[type[Objective], Any] | None:
    """The objective class named by ``spec`` and its config built from the other keys, or ``None``
    with each problem appended to ``errors`` as ``(key, message)`` (the accepted keys named)."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        errors.append((f"{key}.name", f"an objective spec is a mapping with a 'name' key (one of "
                                      f"{', '.join(OBJECTIVES)}), got {spec!r}"))
        return None
    params = dict(spec)
    name = params.pop("name")
    try:
        cls = objective_class(name)
    except ConfigError as err:
        errors.append((f"{key}.name", str(err)))
        return None
    first = len(errors)
    try:
        config = build_checked(cls.Config, params, key, errors)
    except (TypeError, ValueError) as err:  # the config's own checks (__post_init__)
        errors.append((key, f"{name}: {err}"))
        config = None
    if config is None:
        accepted = f"{name} accepts: {describe_config(cls.Config)}"
        errors[first:] = [(k, f"{message}; {accepted}") for k, message in errors[first:]]
        return None
    return cls, config


def complete_spec(spec: Any, key: str = "objective", errors: list | None = None) -> Any:
    """``spec`` checked against its objective's config class and returned with every default filled
    in (what a saved ``config.yaml`` shows); problems go to ``errors`` (the config loader's list),
    and ``spec`` comes back as it was."""
    found = _configured(spec, key, [] if errors is None else errors)
    return spec if found is None else {"name": found[0].name, **to_dict(found[1])}


def build_objective(spec: Mapping[str, Any]) -> Objective:
    """Build an objective from ``{"name": ..., **params}``; params are checked against its Config.

    Raises:
        ConfigError (a ``ValueError``): unknown name (listing the known ones), unknown key or
            wrong type (naming the key and what the config accepts), or an invalid value.
    """
    errors: list = []
    found = _configured(spec, "objective", errors)
    if found is None:
        raise ConfigError("invalid objective:\n" + "\n".join(f"  - {k}: {message}" for k, message in errors))
    cls, config = found
    return cls(config)


__all__ = [
    "DCPO", "GRPO", "DanceGRPO", "DanceGRPOConfig", "GRPOConfig", "METRIC_NAMES", "MaPO", "OBJECTIVES", "SFT", "SPO", "DCPOConfig", "DiffusionDPO", "DiffusionDPOConfig",
    "DiffusionDRO", "DiffusionDROConfig", "DiffusionNFT", "DiffusionNFTConfig", "SPOConfig",
    "InPO", "InPOConfig", "MaPOConfig", "Objective", "ObjectiveDataError", "ObjectiveOutput", "PreferenceTerms",
    "RankDPO", "RankDPOConfig", "SFTConfig", "SmPO", "SmPOConfig", "build_objective", "complete_spec", "describe_config",
    "objective_class", "objective_config_dataclass", "pair_metrics", "prepare_terms", "require_reference",
]
