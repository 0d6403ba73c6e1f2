"""What every model family offers the trainer and the objectives.

A family wraps one diffusers pipeline and exposes *operations* on it (encode, noise, predict,
error), never its parts, so objectives and the trainer never touch a UNet directly. Only the
subclasses in this package know how SD1.5/2.1, SDXL and SD3 differ.

Shapes used throughout:
    B  prompts (groups) in a batch,  K  images per group, best first (K = 2 for pairs),
    C, h, w  latent channels and size,  L, D  text tokens and width,  P  pooled width.

Time: objectives see ``t`` as a float tensor ``[B]`` in [0, 1], the noise level normalised
(0 = clean, 1 = pure noise). Each family converts it to its own scheduler units.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from diffalign.errors import DiffalignError
from diffalign.families.attention import set_attention_backend

TIME_SAMPLINGS = ("uniform", "logit_normal", "mode")
Generators = "torch.Generator | list[torch.Generator] | None"
"""One generator for the whole batch, or one per group (the first dimension)."""


class FamilyError(DiffalignError, ValueError):
    """A checkpoint that no family can load, or options a family does not support."""


@dataclass
class Conditioning:
    """Text conditioning for a ``[B, K]`` group of images (DCPO gives each image its own caption).

    Attributes:
        prompt_embeds: ``[B, K, L, D]`` token embeddings fed to cross/joint attention.
        pooled: ``[B, K, P]`` pooled text embedding (SDXL, SD3), else ``None``.
        time_ids: ``[B, K, 6]`` SDXL micro-conditioning (original h, w, crop top, left,
            target h, w), else ``None``.
    """

    prompt_embeds: Tensor
    pooled: Tensor | None = None
    time_ids: Tensor | None = None

    @property
    def group_shape(self) -> tuple[int, int]:
        """``(B, K)``."""
        return tuple(self.prompt_embeds.shape[:2])

    def flat(self) -> Conditioning:
        """The same tensors with ``B`` and ``K`` merged into one batch axis of ``B*K``."""
        return self._map(lambda x: x.flatten(0, 1))

    def select(self, index: slice) -> Conditioning:
        """The conditioning of images ``index`` of every group: ``[B, K', ...]``."""
        return self._map(lambda x: x[:, index])

    def to(self, *args, **kwargs) -> Conditioning:
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return self._map(lambda x: x.to(*args, **kwargs))

    def _map(self, fn) -> Conditioning:
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})


def group_prompts(prompts: Sequence[str] | Sequence[Sequence[str]], group_size: int | None) -> list[list[str]]:
    """Normalise prompts to a ``[B][K]`` nested list.

    Args:
        prompts: either ``B`` strings (one prompt shared by the group) or ``B`` lists of ``K``
            strings (one caption per image, as DCPO uses).
        group_size: ``K`` to repeat a shared prompt to; ``None`` means 1 for flat prompts.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings or a list of lists of strings, not one string")
    if all(isinstance(p, str) for p in prompts):
        return [[p] * (group_size or 1) for p in prompts]
    nested = [list(p) for p in prompts]
    sizes = {len(p) for p in nested}
    if len(sizes) != 1 or (group_size is not None and sizes != {group_size}):
        raise ValueError(f"every group needs the same number of captions; got sizes {sorted(sizes)}")
    return nested


class ModelFamily:
    """Base class: the maths shared by every family, over a loaded diffusers pipeline.

    Subclasses set ``name``, ``pipeline_class``, ``denoiser_name`` and implement ``_encode_text``,
    ``_predict_flat``, ``_add_noise_flat``, ``_target_flat``, ``loss_weight`` and
    ``sample_noise_and_time``.
    """

    name: ClassVar[str]
    pipeline_class: ClassVar[str]
    denoiser_name: ClassVar[str]
    text_components: ClassVar[tuple[str, ...]]
    default_time_sampling: ClassVar[str]
    loss_weightings: ClassVar[tuple[str, ...]]
    prediction_type: str

    def __init__(
        self,
        pipe,
        path: str | None = None,
        *,
        time_sampling: str | None = None,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "none",
    ):
        """
        Args:
            pipe: the loaded diffusers pipeline.
            time_sampling: ``"uniform"``, ``"logit_normal"`` or ``"mode"`` (SD3 paper §3.1,
                through diffusers' ``compute_density_for_timestep_sampling``); ``None`` takes the
                family's default (uniform for UNets, logit-normal for SD3).
            logit_mean, logit_std, mode_scale: parameters of those densities.
            loss_weighting: ``"none"`` (Diffusion-DPO's choice) or a family-specific scheme.
        """
        self.pipe = pipe
        self.path = path
        self.revision: str | None = None
        self.time_sampling = time_sampling or self.default_time_sampling
        if self.time_sampling not in TIME_SAMPLINGS:
            raise FamilyError(f"time_sampling {self.time_sampling!r} is not one of {', '.join(TIME_SAMPLINGS)}")
        if loss_weighting not in self.loss_weightings:
            raise FamilyError(
                f"loss_weighting {loss_weighting!r} does not apply to the {self.name} family; "
                f"choose one of {', '.join(self.loss_weightings)}"
            )
        self.loss_weighting = loss_weighting
        self._density = dict(logit_mean=logit_mean, logit_std=logit_std, mode_scale=mode_scale)

    # ----------------------------------------------------------------------------- loading
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
    ) -> ModelFamily:
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

    # ----------------------------------------------------------------------------- parts
    @property
    def denoiser(self) -> torch.nn.Module:
        """The module that is trained (UNet or transformer)."""
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        # The first parameter's device: diffusers' ``ModelMixin.device`` first walks every
        # submodule for group-offloading hooks (~5 ms a call on the tiny UNet, every step).
        return next(self.denoiser.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side (from the VAE's config file when it is not loaded:
        the pipelines then fall back to a hard-coded 8)."""
        vae = getattr(self.pipe, "vae", None)
        return vae_downsampling(vae.config if vae is not None else self._vae_config)

    @classmethod
    def pixel_multiple(cls, path: str | Path, revision: str | None = None) -> int:
        """Image sides this family's checkpoint at ``path`` can train on are multiples of this
        (the VAE's downsampling), read from config files only, so training checks the resolution
        before any weights load."""
        from diffusers import AutoencoderKL

        return vae_downsampling(AutoencoderKL.load_config(str(path), subfolder="vae", revision=revision))

    def _require(self, component: str, why: str):
        module = getattr(self.pipe, component, None)
        if module is None:
            raise FamilyError(
                f"{why} needs the {component}, which was not loaded "
                f"(load_vae / load_text_encoders=False, or the latent cache is in use)"
            )
        return module

    # ----------------------------------------------------------------------------- images
    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: Generators = None) -> Tensor:
        """VAE-encode images and apply the checkpoint's latent scaling (and SD3's shift).

        Args:
            pixels: ``[..., 3, H, W]`` in [-1, 1], e.g. ``[B, K, 3, H, W]``.
            generator: for the sample drawn from the VAE posterior (as Diffusion-DPO does).

        Returns:
            ``[..., C, H/f, W/f]`` latents, ``f`` the VAE scale factor, in the VAE's dtype.
        """
        mean, std = self.encode_posterior(pixels)
        return self.latents_from_posterior(mean, std, generator)

    @torch.no_grad()
    def encode_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE posterior of each image, before scaling: ``(mean, std)``, each ``[..., C, h, w]``.

        The latent cache stores these rather than one sample, so cached training still draws a
        fresh posterior sample each time, exactly as the uncached path does.
        """
        vae = self._require("vae", "encode_images")
        lead = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:]).to(vae.device, vae.dtype)
        posterior = vae.encode(flat).latent_dist
        return (posterior.mean.reshape(*lead, *posterior.mean.shape[1:]),
                posterior.std.reshape(*lead, *posterior.std.shape[1:]))

    def latents_from_posterior(self, mean: Tensor, std: Tensor, generator: Generators = None) -> Tensor:
        """Draw ``mean + std·ε`` and scale it to the denoiser's latent space: ``(z − shift)·scale``.

        Draws ε as diffusers' ``DiagonalGaussianDistribution.sample`` does, so the same generator
        gives the same latents whether the posterior came from the VAE or from the cache.
        """
        from diffusers.utils.torch_utils import randn_tensor

        eps = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (mean + std * eps - self._vae_shift) * self.latent_scale

    @property
    def latent_scale(self) -> float:
        """The VAE's ``scaling_factor``, read from its config file when the VAE is not loaded."""
        vae = getattr(self.pipe, "vae", None)
        if vae is not None:
            return vae.config.scaling_factor
        return self._vae_config["scaling_factor"]

    @property
    def _vae_shift(self) -> float:
        vae = getattr(self.pipe, "vae", None)
        config = vae.config if vae is not None else self._vae_config
        return config.get("shift_factor", None) or 0.0

    @functools.cached_property
    def _vae_config(self) -> dict:
        """The VAE's config file, read once: the cached-latent path asks for it at every step."""
        from diffusers import AutoencoderKL

        return AutoencoderKL.load_config(self.path, subfolder="vae", revision=self.revision)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Inverse of :meth:`encode_images`: ``[..., C, h, w]`` latents → ``[..., 3, H, W]`` in [-1, 1]."""
        vae = self._require("vae", "decode")
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:]).to(vae.device, vae.dtype)
        flat = flat / vae.config.scaling_factor + self._vae_shift
        pixels = vae.decode(flat).sample.clamp(-1, 1)
        return pixels.reshape(*lead, *pixels.shape[1:])

    # ----------------------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode_prompts(
        self,
        prompts: Sequence[str] | Sequence[Sequence[str]],
        group_size: int | None = None,
        image_info: dict[str, Tensor] | None = None,
    ) -> Conditioning:
        """Encode one prompt per image with the pipeline's own ``encode_prompt``.

        Identical strings are encoded once (a Diffusion-DPO pair shares its prompt, so this
        halves the text-encoder work).

        Args:
            prompts: ``B`` prompts shared by each group, or ``B`` lists of ``K`` captions.
            group_size: ``K`` when ``prompts`` are shared (default 1).
            image_info: SDXL only: ``original_size`` and ``crop_top_left``, each ``[B, K, 2]``.

        Returns:
            :class:`Conditioning` with tensors shaped ``[B, K, ...]``.
        """
        grid = group_prompts(prompts, group_size)
        b, k = len(grid), len(grid[0])
        flat = [p for row in grid for p in row]
        unique = list(dict.fromkeys(flat))
        embeds, pooled = self._encode_text(unique)
        index = torch.tensor([unique.index(p) for p in flat], device=embeds.device)
        return self.make_conditioning(
            embeds[index].unflatten(0, (b, k)),
            None if pooled is None else pooled[index].unflatten(0, (b, k)),
            image_info,
        )

    def make_conditioning(
        self, prompt_embeds: Tensor, pooled: Tensor | None = None, image_info: dict[str, Tensor] | None = None
    ) -> Conditioning:
        """Conditioning from text embeddings computed earlier (e.g. by the latent cache).

        Args:
            prompt_embeds: ``[B, K, L, D]``; pooled: ``[B, K, P]`` or ``None``.
            image_info: as for :meth:`encode_prompts` (SDXL's time ids are built here).
        """
        return self._with_image_info(Conditioning(prompt_embeds, pooled), image_info)

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """``N`` strings → (``[N, L, D]`` embeddings, ``[N, P]`` pooled or ``None``)."""
        raise NotImplementedError

    def _with_image_info(self, cond: Conditioning, image_info: dict[str, Tensor] | None) -> Conditioning:
        return cond

    # ----------------------------------------------------------------------------- noise maths
    def sample_noise_and_time(self, latents: Tensor, generator: Generators = None) -> tuple[Tensor, Tensor]:
        """One noise and one time per group, shared by its ``K`` images (as Diffusion-DPO does).

        Args:
            latents: ``[B, K, C, h, w]``.
            generator: one generator, or a list of ``B`` (one per group: then each group's draw
                depends only on its own generator, whatever the batch or process layout).

        Returns:
            ``noise [B, K, C, h, w]`` (identical along K) and ``t [B]`` in [0, 1].
        """
        from diffusers.utils.torch_utils import randn_tensor

        b = latents.shape[0]
        noise = randn_tensor((b, 1, *latents.shape[2:]), generator=generator, device=latents.device, dtype=latents.dtype)
        return noise.expand_as(latents), self._sample_time(b, latents.device, generator)

    def _sample_time(self, batch: int, device, generator: Generators) -> Tensor:
        """Draw ``u ~ density`` in [0, 1) per group and map it to the family's noise levels."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        gens = generator if isinstance(generator, (list, tuple)) else [generator]
        sizes = [1] * batch if len(gens) > 1 else [batch]
        if len(gens) > 1 and len(gens) != batch:
            raise ValueError(f"got {len(gens)} generators for {batch} groups")
        # Drawn where each generator lives, then moved: a CPU generator cannot draw on a GPU.
        u = torch.cat([
            compute_density_for_timestep_sampling(
                self.time_sampling, size, device=gen.device if gen is not None else device, generator=gen, **self._density
            ).to(device)
            for gen, size in zip(gens, sizes)
        ])
        n = self.num_train_timesteps
        # As diffusers' SD3 scripts do: u picks one of the scheduler's N discrete training times.
        return self._time_from_index((u * n).long().clamp(0, n - 1))

    @property
    def num_train_timesteps(self) -> int:
        return self.pipe.scheduler.config.num_train_timesteps

    def _time_from_index(self, index: Tensor) -> Tensor:
        """Scheduler training index ``[N]`` → normalised time ``[N]`` in [0, 1]."""
        raise NotImplementedError

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward diffusion of ``[B, K, ...]`` latents at group times ``t [B]``."""
        return self._grouped(self._add_noise_flat, latents, noise, t)

    def target(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser should predict: epsilon, v, or flow velocity; ``[B, K, ...]``."""
        return self._grouped(self._target_flat, latents, noise, t)

    def predict(self, model: torch.nn.Module, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """Run ``model`` (the denoiser, possibly wrapped by accelerate/peft) on a whole group.

        All ``B*K`` images go through **one** forward pass.

        Args:
            noisy: ``[B, K, C, h, w]``; t: ``[B]``; cond: ``[B, K, ...]``.

        Returns:
            ``[B, K, C, h, w]`` prediction in the family's parameterisation.
        """
        b, k = noisy.shape[:2]
        if cond.group_shape != (b, k):
            raise ValueError(f"conditioning is shaped {cond.group_shape} but latents are ({b}, {k})")
        out = self._predict_flat(model, noisy.flatten(0, 1), t.repeat_interleave(k), cond.flat())
        return out.unflatten(0, (b, k))

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-group weight ``[B]`` of the denoising error (1 unless a weighting is configured)."""
        raise NotImplementedError

    def denoising_error(
        self, model: torch.nn.Module, latents: Tensor, cond: Conditioning, noise: Tensor, t: Tensor
    ) -> Tensor:
        """Weighted mean-squared denoising error of every image.

        ``err[b, k] = w(t_b) · mean_{c,h,w} (model(x_t, t, c) − target)²``, in fp32.

        Args:
            latents, noise: ``[B, K, C, h, w]``; cond: ``[B, K, ...]``; t: ``[B]``.

        Returns:
            ``[B, K]``, differentiable with respect to ``model``'s parameters.
        """
        noisy = self.add_noise(latents, noise, t)
        pred = self.predict(model, noisy, t, cond)
        target = self.target(latents, noise, t)
        err = (pred.float() - target.float()).pow(2).mean(dim=(2, 3, 4))
        return err * self.loss_weight(t).to(err)[:, None]

    @staticmethod
    def _grouped(fn, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        b, k = latents.shape[:2]
        out = fn(latents.flatten(0, 1), noise.flatten(0, 1), t.repeat_interleave(k))
        return out.unflatten(0, (b, k))

    def _add_noise_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _target_flat(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        raise NotImplementedError


def untileable(resolution: int, multiple: int, path) -> str | None:
    """Why ``resolution`` cannot be trained on at ``path`` (``None`` when it can): the words after
    the option's name in the error, with the nearest sides that work."""
    if resolution % multiple == 0:
        return None
    low = resolution - resolution % multiple
    use = f"{low} or {low + multiple}" if low else f"{multiple}"
    return f"{resolution} is not a multiple of {multiple}, the pixels per latent of {path}; use {use}"


def vae_downsampling(vae_config) -> int:
    """Pixels per latent along each side of a VAE with this config: each encoder block but the
    last halves the image."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def input_dtype(model, default: torch.nn.Module) -> torch.dtype:
    """The dtype to feed ``model``: that of its first parameter (the input convolution or patch
    embedding; LoRA's fp32 adapters come later), or ``default``'s when ``model`` is a plain
    callable. Read from the module actually called, so a frozen bf16 reference copy gets bf16
    inputs while the fp32 policy gets fp32; diffusers' ``.dtype`` property would walk every
    submodule on each call (about 0.1 s per step on SDXL-sized models)."""
    module = model if isinstance(model, torch.nn.Module) else default
    return next(module.parameters()).dtype


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
