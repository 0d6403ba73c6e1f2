"""Images of a prompt set from one checkpoint, in GenEval's folder layout, resumable.

Layout (GenEval ``generation/diffusers_generate.py``, so its official evaluator runs on the same images)::

    <outdir>/generation.json              settings: checkpoint, seeds, steps, guidance, resolution
    <outdir>/<index:05d>/metadata.jsonl   the prompt's record (a GenEval record, or {"prompt": ...})
    <outdir>/<index:05d>/samples/<k:04d>.png   (a text-to-video model's: <k:04d>.mp4)

Image ``k`` of prompt ``index`` is drawn from its own CPU generator seeded ``seed + index·samples + k``,
so it does not depend on batching, device or which images were already there, and every checkpoint
compared with the same ``seed`` gets the same noise.

Images already on disk are reused only when they were made from the same weights, by content, and
the same settings: ``generation.json`` records a digest of the model and the LoRA
(:mod:`diffalign.digest`), so a LoRA retrained into the same folder is not taken for the old one,
and a checkpoint that moved is still recognised.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from diffalign.errors import DiffalignError


class GenerationMismatchError(DiffalignError, ValueError):
    """An output folder generated from other weights or with other settings than asked for now."""


@dataclass(frozen=True)
class GenerationSettings:
    """What makes two runs' images comparable; written to ``generation.json``."""

    model: str
    lora: str | None = None
    samples: int = 4
    seed: int = 42
    steps: int = 50
    guidance: float = 9.0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    frames: int | None = None
    """Text-to-video models (Wan): frames per clip; ``None`` for image models."""
    fps: int = 16
    """Frame rate of the saved clips."""


def image_seed(settings: GenerationSettings, index: int, sample: int) -> int:
    """The seed of image ``sample`` of prompt ``index``."""
    return settings.seed + index * settings.samples + sample


def sample_path(outdir: Path, index: int, sample: int, video: bool = False) -> Path:
    """Where sample ``sample`` of prompt ``index`` lives: a PNG, or an MP4 clip for ``video``."""
    return Path(outdir) / f"{index:05d}" / "samples" / f"{sample:04d}{'.mp4' if video else '.png'}"


def check_media(settings: GenerationSettings) -> None:
    """Refuse ``frames`` for an image model, no ``frames`` for a video model, and a frame count its
    VAE cannot take, from the model's config files alone (before anything is written or loaded).
    A pipeline no diffalign family knows is taken as an image model."""
    from diffalign.families import FAMILIES, FamilyError, detect_family

    try:
        family = FAMILIES[detect_family(settings.model).family]
    except FamilyError:
        family = None  # a pipeline no family knows: taken as an image model
    media = family.media if family is not None else "image"
    if media == "video" and settings.frames is None:
        raise FamilyError(f"{settings.model} makes videos: give the number of frames (--frames, e.g. 81 for Wan 2.1)")
    if media == "image" and settings.frames is not None:
        raise FamilyError(f"--frames {settings.frames} was given, but {settings.model} makes images")
    why = media == "video" and family.clip_problem(settings.frames)
    if why:
        raise FamilyError(why)


def load_pipeline(model: str, lora: str | None = None, device: str = "cpu", dtype=None):
    """A diffusers pipeline from a folder or hub id, with LoRA weights from ``lora`` if given."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype or torch.float32)
    if lora:
        pipe.load_lora_weights(lora)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generation_record(settings: GenerationSettings, prompts: int) -> dict:
    """What ``generation.json`` holds: the settings, the digests of the weights, the prompt count."""
    from diffalign.digest import digest

    return {"settings": asdict(settings), "weights": {"model": digest(settings.model), "lora": digest(settings.lora)},
            "prompts": prompts}


def _differences(found: dict, wanted: dict) -> list[str]:
    """What differs between two generation records, paths aside (a moved checkpoint is the same)."""
    changed = []
    for key in ("model", "lora"):
        old, new = (found.get("weights") or {}).get(key, "not recorded"), wanted["weights"][key]
        if old != new:
            changed.append(f"the {key} weights ({wanted['settings'][key]}): {old} then, {new} now")
    for key, new in wanted["settings"].items():
        old = (found.get("settings") or {}).get(key)
        if key not in ("model", "lora") and old != new:
            changed.append(f"{key}: {old!r} then, {new!r} now")
    if found.get("prompts") != wanted["prompts"]:
        changed.append(f"prompts: {found.get('prompts')} then, {wanted['prompts']} now")
    return changed


def generate_images(records: list[dict], outdir: str | Path, settings: GenerationSettings, pipe=None,
                    batch_size: int = 4, device: str = "cpu", progress: bool = True, regenerate: bool = False) -> Path:
    """Write every missing image of ``records`` (GenEval records or ``{"prompt": ...}``) to ``outdir``.

    Args:
        pipe: an already loaded pipeline for ``settings.model``/``settings.lora`` (loaded here if None
            and anything is missing).
        batch_size: images per pipeline call.
        regenerate: when ``outdir`` holds images made from other weights or settings, delete them
            and make them again (instead of raising).

    Raises:
        GenerationMismatchError: ``outdir`` holds images made from other weights (by content), with
            other settings, or for other prompts.
    """
    import shutil

    import torch
    from tqdm.auto import tqdm

    from diffalign.families.pipelines import generate

    check_media(settings)
    outdir = Path(outdir)
    record_file = outdir / "generation.json"
    wanted = generation_record(settings, len(records))
    if record_file.is_file():
        changed = _differences(json.loads(record_file.read_text()), wanted)
        if changed and not regenerate:
            raise GenerationMismatchError(
                f"{outdir} holds images made differently ({'; '.join(changed)}); pass --regenerate to make them "
                "again, or choose another --out")
        if changed:
            shutil.rmtree(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(wanted, indent=2))
    video = settings.frames is not None
    todo = []
    for index, record in enumerate(records):
        folder = outdir / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        meta = folder / "metadata.jsonl"
        if meta.is_file() and json.loads(meta.read_text()) != record:
            raise GenerationMismatchError(f"{meta} holds another prompt than {record['prompt']!r}")
        meta.write_text(json.dumps(record))
        todo += [(index, k) for k in range(settings.samples) if not sample_path(outdir, index, k, video).is_file()]
    if not todo:
        return outdir
    pipe = pipe or load_pipeline(settings.model, settings.lora, device)
    options = {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance}
    options.update({k: v for k, v in (("height", settings.height), ("width", settings.width)) if v})
    bar = tqdm(total=len(todo), desc=f"generating ({Path(settings.model).name})", unit="video" if video else "image",
               disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prompts = [records[i]["prompt"] for i, _ in chunk]
        generators = [torch.Generator().manual_seed(image_seed(settings, i, k)) for i, k in chunk]
        negative = [settings.negative_prompt] * len(chunk) if settings.negative_prompt else None
        samples = generate(pipe, prompts, generators, frames=settings.frames, negative_prompt=negative, **options)
        for (index, k), sample in zip(chunk, samples):
            _save_sample(sample, sample_path(outdir, index, k, video), settings.fps)
        bar.update(len(chunk))
    bar.close()
    return outdir


def _save_sample(sample, path: Path, fps: int) -> None:
    """Write a PIL image as PNG or a video (uint8 ``[F, 3, H, W]``) as MP4, through a temporary name
    renamed into place, so a half-written file is never taken as done."""
    tmp = path.with_name(f".{path.name}.tmp")
    if hasattr(sample, "save"):
        sample.save(tmp, format="PNG")
    else:
        from diffalign.data.videos import encode_video

        tmp.write_bytes(encode_video(sample, fps=fps))
    tmp.replace(path)
