"""Training objectives: pure tensor maths over per-image denoising errors (DESIGN.md §3.3).

``OBJECTIVES`` maps each config name to its class; :func:`build_objective` builds one from the
``objective:`` block of a training config (``{"name": ..., **params}``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..typed_config import ConfigError, from_dict, lookup
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
from .inpo import InPO, InPOConfig
from .mapo import MaPO, MaPOConfig
from .rank_dpo import RankDPO, RankDPOConfig
from .sft import SFT, SFTConfig
from .smpo import SmPO, SmPOConfig

OBJECTIVES = {"diffusion_dpo": DiffusionDPO, "mapo": MaPO, "dcpo": DCPO, "rank_dpo": RankDPO, "sft": SFT,
              "inpo": InPO, "smpo": SmPO}


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


def build_objective(spec: Mapping[str, Any]) -> Objective:
    """Build an objective from ``{"name": ..., **params}``; params are checked against its Config.

    Raises:
        ConfigError (a ``ValueError``): unknown name (listing the known ones), unknown key or
            wrong type (naming the key and what the config accepts), or an invalid value.
    """
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"an objective spec is a mapping with a 'name' key (one of {', '.join(OBJECTIVES)}), "
                          f"got {spec!r}")
    params = dict(spec)
    name = params.pop("name")
    cls = objective_class(name)
    accepted = f"{cls.Config.__name__} accepts: {describe_config(cls.Config)}"
    try:
        config = from_dict(cls.Config, params, source=f"objective {name!r}")
    except ConfigError as err:
        raise ConfigError(f"{err}\n  {accepted}") from err
    except (TypeError, ValueError) as err:  # the config's own checks (__post_init__)
        raise ConfigError(f"objective {name!r}: {err}; {accepted}") from err
    return cls(config)


__all__ = [
    "DCPO", "METRIC_NAMES", "MaPO", "OBJECTIVES", "SFT", "DCPOConfig", "DiffusionDPO", "DiffusionDPOConfig",
    "InPO", "InPOConfig", "MaPOConfig", "Objective", "ObjectiveDataError", "ObjectiveOutput", "PreferenceTerms",
    "RankDPO", "RankDPOConfig", "SFTConfig", "SmPO", "SmPOConfig", "build_objective", "describe_config",
    "objective_class", "objective_config_dataclass", "pair_metrics", "prepare_terms", "require_reference",
]
