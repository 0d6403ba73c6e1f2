"""Start-up checks that need no model weights: each mismatch is one clear error, raised
before anything heavy loads. ``diffalign train`` and ``diffalign check-config`` run the same
:func:`preflight`, so a config that one accepts the other accepts too."""

from __future__ import annotations

import importlib.util

from diffalign.config import TrainConfig
from diffalign.data.dataset import PreferenceDataset
from diffalign.errors import DiffalignError


class StartupError(DiffalignError, ValueError):
    """A run that cannot start; the message names the fix."""


def preflight(config: TrainConfig):
    """Build the objective and check it against the data, the family, the output folder and the
    machine. Reads configs and Parquet footers, never weights.

    Returns:
        ``(objective, dataset, family_name)``.
    """
    from diffalign.families import detect_family
    from diffalign.objectives import build_objective
    from diffalign.training import run_folder

    objective = build_objective(config.objective)
    data = PreferenceDataset.open(config.data.path)
    _check_rows(data)
    has_captions = all(c is not None for c in data.column("captions"))
    has_scores = all(s is not None for s in data.column("scores"))
    has_ranks = all(r is not None for r in data.column("ranks")) or has_scores
    objective.check_data(data.group_size, has_captions, has_ranks, has_scores)
    _check_step(config, objective)
    family = config.model.family or detect_family(config.model.path, config.model.revision).family
    supported = getattr(objective, "supported_families", None)
    if supported is not None and family not in supported:
        raise StartupError(f"{objective.name} does not support the {family} family (only {', '.join(supported)})")
    _check_resolution(config, family)
    if config.lora is not None and "kohya" in config.lora.formats:
        from diffalign.training.lora import KOHYA_FAMILIES

        if family not in KOHYA_FAMILIES:
            raise StartupError(f"lora.formats: kohya is written for the UNet families ({', '.join(KOHYA_FAMILIES)}), "
                               f"not {family}; keep lora.formats=[diffusers]")
    if config.data.cache:
        _check_cache(config, family, data, has_captions and not objective.needs_captions, objective.name)
    if config.optim.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise StartupError("optim.optimizer: adamw_8bit needs bitsandbytes: pip install 'diffalign[bnb]'")
    if config.logging.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise StartupError("logging.report_to: wandb needs wandb: pip install 'diffalign[wandb]'")
    if config.compile_memory_budget is not None and not config.compile:
        raise StartupError(f"compile_memory_budget: {config.compile_memory_budget} needs compile: true")
    run_folder.check(config.output_dir, config.resume, config.overwrite)
    return objective, data, family


def _check_step(config: TrainConfig, objective) -> None:
    """What the objective's preference step needs beyond the data."""
    inversion = getattr(objective.config, "inversion", None)
    if inversion is not None and inversion.guidance != 1 and config.data.cache:
        raise StartupError(f"objective.inversion.guidance: {inversion.guidance} needs the text encoders for the empty "
                           "prompt, which the latent cache leaves unloaded; use guidance 1 or data.cache=false")


def _check_rows(data: PreferenceDataset) -> None:
    if len(data):
        return
    dropped = data.manifest.get("counts", {}).get("dropped", {})
    why = f" (its builder dropped every source row: {dropped})" if dropped else ""
    raise StartupError(f"the dataset {data.root} has no rows{why}; rebuild it from a source that has some, "
                       "or point data.path at another dataset")


def _check_resolution(config: TrainConfig, family: str) -> None:
    """The VAE (and SD3's patches) must tile the image, or the latents lose a border silently."""
    from diffalign.families import FAMILIES
    from diffalign.families.base import untileable

    multiple = FAMILIES[family].pixel_multiple(config.model.path, config.model.revision)
    for key, value in (("data.resolution", config.data.resolution), ("validation.resolution", config.validation.resolution)):
        why = None if value is None else untileable(value, multiple, config.model.path)
        if why:
            raise StartupError(f"{key}: {why}")


def _check_cache(config: TrainConfig, family: str, data: PreferenceDataset, caption_mismatch: bool, name: str) -> None:
    from diffalign.data.cache import LatentCache

    cache = LatentCache.for_model(config.data.path, family, config.model.path, config.model.revision,
                                  config.data.resolution)
    cache.check_compatible(resolution=config.data.resolution, rows=len(data))
    if caption_mismatch:
        raise StartupError(
            f"the cache holds per-image caption embeddings but {name} conditions on the prompt; "
            "train with data.cache=false"
        )
