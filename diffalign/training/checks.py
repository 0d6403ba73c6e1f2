"""Start-up checks that need no model weights: each mismatch is one clear error, raised
before anything heavy loads."""

from __future__ import annotations

import importlib.util

from diffalign.config import TrainConfig
from diffalign.data.cache import META, cache_dir
from diffalign.data.dataset import PreferenceDataset


class StartupError(ValueError):
    """A run that cannot start; the message names the fix."""


def preflight(config: TrainConfig):
    """Build the objective and check it against the data, the family and the machine.

    Returns:
        ``(objective, dataset, family_name)``.
    """
    from diffalign.families import detect_family
    from diffalign.objectives import build_objective

    objective = build_objective(config.objective)
    data = PreferenceDataset.open(config.data.path)
    has_captions = all(c is not None for c in data.column("captions"))
    has_ranks = all(r is not None for r in data.column("ranks")) or all(s is not None for s in data.column("scores"))
    objective.check_data(data.group_size, has_captions, has_ranks)
    family = config.model.family or detect_family(config.model.path, config.model.revision).family
    supported = getattr(objective, "supported_families", None)
    if supported is not None and family not in supported:
        raise StartupError(f"{objective.name} does not support the {family} family (only {', '.join(supported)})")
    if config.data.cache:
        folder = cache_dir(config.data.path, family, config.data.resolution)
        if not (folder / META).exists():
            raise StartupError(
                f"data.cache is on but there is no cache in {folder}; build it with "
                f"`diffalign cache {config.data.path} --model {config.model.path} --resolution {config.data.resolution}`"
            )
        if has_captions and not objective.needs_captions:
            raise StartupError(
                f"the cache holds per-image caption embeddings but {objective.name} conditions on the prompt; "
                "train without data.cache"
            )
    if config.optim.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise StartupError("optim.optimizer: adamw_8bit needs bitsandbytes: pip install 'diffalign[bnb]'")
    if config.logging.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise StartupError("logging.report_to: wandb needs wandb: pip install 'diffalign[wandb]'")
    budget = config.compile_memory_budget
    if budget is not None and not (config.compile and 0 < budget <= 1):
        raise StartupError(f"compile_memory_budget: {budget} needs compile: true and a value in (0, 1]")
    if config.batch_size < 1 or config.gradient_accumulation_steps < 1 or config.max_steps < 1:
        raise StartupError("batch_size, gradient_accumulation_steps and max_steps must be at least 1")
    return objective, data, family
