"""Start-up checks that need no model weights: each mismatch is one clear error, raised
before anything heavy loads. ``diffalign train`` and ``diffalign check-config`` run the same
:func:`preflight`, so a config that one accepts the other accepts too."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from diffalign.config import TrainConfig
from diffalign.data.dataset import PreferenceDataset
from diffalign.errors import DiffalignError


class StartupError(DiffalignError, ValueError):
    """A run that cannot start; the message names the fix."""


@dataclass(frozen=True)
class CachePlan:
    """How a run gets its latents and prompt embeddings.

    ``action``: ``"use"`` (a finished cache for this model), ``"build"`` (build it first, then
    use it) or ``"off"`` (VAE and text encoders at every step); ``reason`` says why, for the log;
    ``cache``: under ``"use"``, the cache opened and checked against the model and the data (its
    fingerprint taken once, here), which the run reads.
    """

    action: str
    folder: Path
    reason: str
    cache: object = None

    @property
    def cached(self) -> bool:
        return self.action != "off"


@dataclass(frozen=True)
class Startup:
    """What :func:`preflight` derives from a config, once, for the run to start from.

    ``objective``: the built objective; ``settings``: its step's settings (the config's
    ``rollout:`` or ``inversion:`` block built, or ``None``); ``data``: the opened dataset;
    ``family``: the family's name; ``cache``: how the run gets its latents."""

    objective: object
    settings: object
    data: PreferenceDataset
    family: str
    cache: CachePlan


def preflight(config: TrainConfig) -> Startup:
    """Build the objective and check it against the data, the family, the output folder and the
    machine. Reads configs and Parquet footers, never weights.

    Returns:
        :class:`Startup`: what the run starts from, derived here once.
    """
    from diffalign.families import FAMILIES, detect_family
    from diffalign.objectives import build_objective
    from diffalign.outputs import check_apart
    from diffalign.step_settings import step_settings
    from diffalign.steps import STEPS
    from diffalign.training import run_folder

    objective = build_objective(config.objective)
    settings = step_settings(config, objective)
    data = PreferenceDataset.open(config.data.path)
    _check_rows(data)
    has_captions = all(c is not None for c in data.column("captions"))
    has_scores = all(s is not None for s in data.column("scores"))
    has_ranks = all(r is not None for r in data.column("ranks")) or has_scores
    objective.check_data(data.group_size, has_captions, has_ranks, has_scores)
    if has_scores and (objective.needs_scores or objective.needs_ranks):
        _check_finite_scores(data, objective.name)
    family = config.model.family or detect_family(config.model.path, config.model.revision).family
    why = STEPS[objective.step].family_problem(objective, FAMILIES[family])
    if why:
        raise StartupError(f"{objective.name} does not support the {family} family: {why}")
    why = STEPS[objective.step].settings_problem(objective, settings, FAMILIES[family])
    if why:
        raise StartupError(f"{objective.name}: {why}")
    if config.reference_pass is True:
        from diffalign.training.reference_pass import problem

        if (why := problem(config, objective)) is not None:
            raise StartupError(f"reference_pass: true, but {why}; use reference_pass: auto (or false)")
    _check_resolution(config, family)
    _check_media(config, family, data)
    _check_memory(config, data.group_size)
    if config.lora is not None and "kohya" in config.lora.formats:
        from diffalign.families import FAMILIES

        if not FAMILIES[family].kohya_lora:
            kohya = ", ".join(name for name, cls in FAMILIES.items() if cls.kohya_lora)
            raise StartupError(f"lora.formats: kohya is written for the families with settled kohya keys ({kohya}), "
                               f"not {family}; keep lora.formats=[diffusers]")
    cache_plan = plan_cache(config, family, data, objective, settings)
    if config.optim.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise StartupError("optim.optimizer: adamw_8bit needs bitsandbytes: pip install 'diffalign[bnb]'")
    if config.logging.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise StartupError("logging.report_to: wandb needs wandb: pip install 'diffalign[wandb]'")
    if config.compile_memory_budget is not None and config.compile is False:
        raise StartupError(f"compile_memory_budget: {config.compile_memory_budget} needs compile: true "
                           "(or regional, or auto)")
    inputs = {"model.path": config.model.path, "data.path": config.data.path}
    for block in ("objective", "rollout", "inversion"):
        inputs.update({f"{block}.{k}": v for k, v in (getattr(config, block) or {}).items()
                       if k != "name" and isinstance(v, str)})
    check_apart(config.output_dir, inputs, "output_dir")
    run_folder.check(config.output_dir, config.resume, config.overwrite)
    _check_resume(config)
    return Startup(objective, settings, data, family, cache_plan)


def _check_resume(config: TrainConfig) -> None:
    """A ``resume`` folder that is a whole checkpoint (sizes checked; the checksums are checked when
    the run loads it): a wrong path must not wait for the model to load."""
    from diffalign.training import checkpoint

    if config.resume in (None, "latest"):
        return
    problem = checkpoint.verify(Path(config.resume), checksums=False)
    if problem:
        raise StartupError(f"resume: {config.resume} cannot be resumed from: {problem}; give a checkpoint folder "
                           f"(e.g. {Path(config.output_dir) / 'checkpoints' / 'checkpoint-0000500'}) or resume=latest")


def _check_finite_scores(data: PreferenceDataset, objective: str) -> None:
    """Scores the objective learns from must be numbers: a NaN or an infinity would pass as a
    certain preference (or make every step of its batch non-finite, blamed on the learning rate)."""
    import math

    bad = [row_id for row_id, scores in zip(data.column("id"), data.column("scores"))
           if scores is not None and not all(s is not None and math.isfinite(s) for s in scores)]
    if bad:
        shown = ", ".join(map(str, bad[:3])) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise StartupError(f"data.path: {objective} learns from the scores column, and {len(bad)} row(s) of {data.root} "
                           f"hold a score that is not a finite number ({shown}); rescore them "
                           "(`diffalign score --images DATASET --reward ... --into OUT`) or drop them")


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


def _check_memory(config: TrainConfig, group_size: int) -> None:
    """A batch's decoded images (the loader holds them in host memory before the model sees them)
    must fit in the memory that is free: a resolution typed with an extra zero is refused here,
    not after the model loaded."""
    from diffalign.resources import pixel_bytes, require_memory

    side = config.data.resolution
    need = pixel_bytes(config.batch_size * group_size, side, side, config.data.frames)
    require_memory(need, f"batch_size {config.batch_size} × {group_size} images at data.resolution {side}",
                   "lower data.resolution or batch_size", device="cpu")


def _check_media(config: TrainConfig, family: str, data: PreferenceDataset) -> None:
    """Images for an image family, videos of a frame count its VAE takes for a video family."""
    from diffalign.families import FAMILIES

    wanted = FAMILIES[family].media
    if data.prompts_only:  # no media of its own: the run samples images or videos, whatever the family makes
        return
    if data.media != wanted:
        raise StartupError(f"data.path: {data.root} holds {data.media}s, and the {family} family trains on {wanted}s; "
                           f"point data.path at a {wanted} dataset or model.path at a {data.media} model")
    if data.media == "image":
        if config.data.frames is not None:
            raise StartupError(f"data.frames: {config.data.frames}, but {data.root} holds images; remove data.frames")
        return
    from diffalign.data.videos import require_av

    require_av()  # decoding the clips needs the video extra: say so before any weights load
    if config.data.frames is None:
        raise StartupError(f"data.frames: {data.root} holds videos; say how many frames each training clip has "
                           "(e.g. data.frames=81, Wan 2.1's 5-second clips)")
    why = FAMILIES[family].clip_problem(config.data.frames)
    if why:
        raise StartupError(f"data.frames: {why}")
    if not config.data.center_crop:
        raise StartupError("data.center_crop: videos are centre-cropped; set data.center_crop=true")


def plan_cache(config: TrainConfig, family: str, data: PreferenceDataset, objective, settings=None) -> CachePlan:
    """Decide ``data.cache``: ``true`` requires a finished, matching cache; ``false`` trains
    uncached; ``auto`` uses the cache wherever one can serve the run, building it when it is
    missing or unfinished, and otherwise trains uncached and says why.

    A cache holds centre-cropped, unflipped latents, each row's prompt's embedding and, for a
    captioned dataset, each image's caption's, so it serves an objective conditioned on the prompt
    and one conditioned on the captions (DCPO) alike. It cannot serve random crops or flips, an
    inversion that needs the text encoders for guidance, or a prompt-only dataset (no images to
    encode: online RL samples its own).
    A cache built for another model, by another layout version of diffalign's cache or from an
    older version of the dataset is an error under ``auto`` too: it is the user's data, so it is
    never deleted or overwritten here; the error names the folder to delete and the command that
    rebuilds it.
    """
    from diffalign.data.cache import (
        META,
        cache_bytes,
        cache_dir,
        check_buildable,
        is_complete,
    )
    from diffalign.outputs import OutputError
    from diffalign.resources import require_disk

    mode = config.data.cache
    folder = cache_dir(config.data.path, family, config.data.resolution, config.data.frames, config.data.frame_stride)
    if mode is False:
        return CachePlan("off", folder, "data.cache is false")
    why_not = _cache_cannot_serve(config, data, objective, settings)
    if mode is True:
        if (folder / META).exists():  # a cache of another model is named before what it could not serve
            _matching_cache(config, family, data)
        if why_not:
            raise StartupError(f"data.cache: true, but {why_not}; train with data.cache=false (or auto)")
        return CachePlan("use", folder, "data.cache is true", _matching_cache(config, family, data))
    if why_not:
        return CachePlan("off", folder, why_not)
    if not is_complete(folder):  # mode is "auto" from here on
        if (folder / META).exists():  # an unfinished cache of an older layout: named now, before the model loads
            _check_version(config, folder)
        if not _writable(Path(config.data.path)):
            return CachePlan("off", folder, f"no latent cache in {folder}, and {config.data.path} is not writable")
        need = cache_bytes(config.model.path, config.model.revision, config.data.resolution, config.data.frames,
                           len(data) * data.group_size)
        require_disk(need, config.data.path, "data.cache: auto would build a latent cache that",
                     "free space, or train uncached with data.cache=false")
        try:
            check_buildable(folder)
        except OutputError as err:
            raise StartupError(f"data.cache: auto would build a latent cache, but {err}; or train uncached with "
                               "data.cache=false") from None
        return CachePlan("build", folder, f"no finished latent cache for this model and resolution yet; "
                                          f"its latents take {need / 2**30:.2f} GiB, plus the prompt (and caption) embeddings")
    return CachePlan("use", folder, "a finished latent cache for this model and resolution",
                     _matching_cache(config, family, data))


def _matching_cache(config: TrainConfig, family: str, data: PreferenceDataset):
    """The finished cache of this model, resolution and dataset (a
    :class:`~diffalign.data.cache.LatentCache`), or the error that names the fix."""
    from diffalign.data.cache import LatentCache

    clip = dict(frames=config.data.frames, frame_stride=config.data.frame_stride)
    cache = LatentCache.for_model(config.data.path, family, config.model.path, config.model.revision,
                                  config.data.resolution, **clip)
    cache.check_compatible(resolution=config.data.resolution, rows=len(data), **clip)
    return cache


def _check_version(config: TrainConfig, folder: Path) -> None:
    """Refuse the cache in ``folder`` when an older diffalign wrote it (its layout version differs):
    continuing its build would mix two layouts. Raises, as :func:`_matching_cache` does, a
    :class:`~diffalign.data.cache.CacheMismatchError` naming the folder to delete and the command."""
    import json

    from diffalign.data.cache_layout import META, build_command, check_version

    build = build_command(config.data.path, config.model.path, config.data.resolution, config.data.frames,
                          config.data.frame_stride)
    check_version(folder, json.loads((folder / META).read_text()), build)


def _cache_cannot_serve(config: TrainConfig, data: PreferenceDataset, objective, settings) -> str | None:
    """Why no latent cache can serve this run (``None``: one can)."""
    if data.prompts_only:  # first: no other setting could make a cache of no images useful
        return "the dataset holds prompts only (K = 0): it has no images to cache"
    if not config.data.center_crop or config.data.random_flip:
        return "the latent cache holds centre-cropped, unflipped latents (data.center_crop: true, data.random_flip: false)"
    from diffalign.steps import STEPS

    return STEPS[objective.step].cache_problem(objective, settings)


def _writable(folder: Path) -> bool:
    cache = folder / "cache"
    return os.access(cache if cache.exists() else folder, os.W_OK)
