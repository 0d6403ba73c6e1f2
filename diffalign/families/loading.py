"""Loading a family from a diffusers pipeline folder or hub id, and what can be read of a
checkpoint from its config files alone (no weights): its model index and pixel multiple."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from diffalign.errors import DiffalignError
from diffalign.families.attention import set_attention_backend


class FamilyError(DiffalignError, ValueError):
    """A checkpoint that no family can load, or options a family does not support."""


class Loading:
    """``from_pretrained`` and the config-only facts of a checkpoint; a subclass names its
    ``pipeline_class`` and ``text_components``."""

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        revision: str | None = None,
        variant: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        load_vae: bool = True,
        load_text_encoders: bool = True,
        attention: str = "sdpa",
        **options,
    ):
        """Load a pipeline folder or hub id with diffusers' own ``from_pretrained``.

        Args:
            path: a diffusers pipeline folder (holding ``model_index.json``) or a hub id.
            dtype: weights' dtype (training keeps fp32 masters and autocasts; inference may use
                bf16/fp16).
            load_vae, load_text_encoders: ``False`` skips those components, e.g. when latents and
                prompt embeddings come from the latent cache.
            attention: ``"sdpa"`` (default) or ``"xformers"``; see :mod:`.attention`.
            options: family-specific maths options (time sampling, loss weighting, ...).
        """
        import diffusers

        pipeline_cls = getattr(diffusers, cls.pipeline_class)
        index = read_model_index(path, revision)
        # Components the pipeline needs but the folder lacks or lists as [null, null] (SD3 saved
        # without T5) must be passed as None explicitly, or diffusers refuses to load it.
        skip = {name: None for name in _pipeline_components(pipeline_cls) if (index.get(name) or [None])[0] is None}
        if not load_vae:
            skip["vae"] = None
        if not load_text_encoders:
            skip.update({c: None for c in cls.text_components})
        skip.update(cls._skipped_components(options))
        pipe = pipeline_cls.from_pretrained(
            str(path), revision=revision, variant=variant, dtype=dtype, **skip
        )
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        family = cls(pipe, path=str(path), **options)
        family.revision = revision
        set_attention_backend(family.denoiser, attention)
        return family

    @classmethod
    def _skipped_components(cls, options: dict) -> dict:
        return {}

    @classmethod
    def pixel_multiple(cls, path: str | Path, revision: str | None = None) -> int:
        """Image sides this family's checkpoint at ``path`` can train on are multiples of this
        (the VAE's downsampling), read from config files only, so training checks the resolution
        before any weights load."""
        from diffusers import AutoencoderKL

        return vae_downsampling(AutoencoderKL.load_config(str(path), subfolder="vae", revision=revision))


def untileable(resolution: int, multiple: int, path) -> str | None:
    """Why ``resolution`` cannot be trained on at ``path`` (``None`` when it can): the words after
    the option's name in the error, with the nearest sides that work."""
    if resolution % multiple == 0:
        return None
    low = resolution - resolution % multiple
    use = f"{low} or {low + multiple}" if low else f"{multiple}"
    return f"{resolution} is not a multiple of {multiple}, the pixels per latent of {path}; use {use}"


def vae_downsampling(vae_config) -> int:
    """Pixels per latent along each side of a VAE with this config: its ``scale_factor_spatial``
    (Wan's VAE), else each encoder block but the last halves the image (``block_out_channels``;
    Wan's older configs: ``dim_mult``)."""
    if vae_config.get("scale_factor_spatial"):
        return int(vae_config["scale_factor_spatial"])
    blocks = vae_config.get("block_out_channels") or vae_config["dim_mult"]
    return 2 ** (len(blocks) - 1)


def vae_temporal_factor(vae_config) -> int:
    """Frames per latent frame after the first of a video VAE with this config (its
    ``scale_factor_temporal``; Wan 2.1's older configs have none: 4)."""
    return int(vae_config.get("scale_factor_temporal") or 4)


def vae_latent_numel(vae_config, resolution: int, frames: int | None = None) -> int:
    """Elements of one item's latent, from a VAE config alone: ``C × (R/f)²`` for an image of side
    ``R``; a clip of ``frames`` frames times its ``(frames − 1)/t + 1`` latent frames (a video VAE
    keeps the first frame and compresses each later run of ``t``). ``C`` is ``latent_channels``
    (Wan's VAE: ``z_dim``)."""
    side = resolution // vae_downsampling(vae_config)
    latent_frames = 1 if frames is None else (frames - 1) // vae_temporal_factor(vae_config) + 1
    channels = vae_config.get("latent_channels") or vae_config["z_dim"]
    return channels * latent_frames * side * side


def _pipeline_components(pipeline_cls) -> list[str]:
    params = inspect.signature(pipeline_cls.__init__).parameters
    return [name for name in params if name != "self" and params[name].default is inspect.Parameter.empty]


def read_model_index(path: str | Path, revision: str | None = None) -> dict:
    """``model_index.json`` of a local folder or hub id, or a :class:`FamilyError` that says why not."""
    local = Path(path).expanduser()
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            hint = ""
            if (local / "config.json").is_file():
                hint = " It holds a config.json: pass the pipeline folder above it, not one component."
            raise FamilyError(
                f"{local} is not a diffusers pipeline: it has no model_index.json.{hint} "
                "Save one with `pipeline.save_pretrained(folder)` or pass a hub id."
            )
        return json.loads(index.read_text())
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(str(path), revision=revision))
    except Exception as err:  # hub errors come in many types; the message is what matters
        raise FamilyError(
            f"could not read model_index.json for {path!r}: it is not a local folder and the hub "
            f"lookup failed ({type(err).__name__}: {err}). Check the path or id, or unset HF_HUB_OFFLINE."
        ) from err
