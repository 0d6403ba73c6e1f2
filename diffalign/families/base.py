"""What every model family offers the trainer, the steps and the objectives.

A family wraps one diffusers pipeline and exposes *operations* on it (encode, noise, predict,
error), never its parts, so objectives and the trainer never touch a UNet directly. Only the
subclasses in this package know how SD1.5/2.1, SDXL and SD3 differ. The operations live by job
in :mod:`.loading`, :mod:`.latents`, :mod:`.conditioning` and :mod:`.noise`; this class joins them.

Shapes used throughout:
    B  prompts (groups) in a batch,  K  images per group, best first (K = 2 for pairs),
    *latent  one image's latent (C, h, w; a video's C, f, h, w),  L, D  text tokens and width.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from diffalign.families.builds import Builds
from diffalign.families.conditioning import Conditioning, PromptOperations, group_prompts, stored_texts
from diffalign.families.latents import Generators, LatentOperations
from diffalign.families.loading import (FamilyError, Loading, read_model_index, untileable, vae_downsampling,
                                         vae_latent_numel)
from diffalign.families.noise import TIME_SAMPLINGS, NoiseOperations


class ModelFamily(Loading, LatentOperations, PromptOperations, NoiseOperations, Builds):
    """Base class: the maths shared by every family, over a loaded diffusers pipeline.

    What a family offers the rest of diffalign is written down in
    :class:`~diffalign.families.interface.FamilyInterface`; the few hooks a new family fills for
    it are :class:`~diffalign.families.hooks.FamilyHooks`.
    """

    name: ClassVar[str]
    pipeline_class: ClassVar[str]
    denoiser_name: ClassVar[str]
    text_components: ClassVar[tuple[str, ...]]
    default_time_sampling: ClassVar[str]
    loss_weightings: ClassVar[tuple[str, ...]]
    prediction_type: str
    repeated_blocks: ClassVar[tuple[str, ...]] = ()
    """The denoiser's repeated block classes, for regional compilation where diffusers' model
    class names none in its ``_repeated_blocks``."""
    kohya_lora: ClassVar[bool] = False
    takes_guidance: bool = True
    """Whether the checkpoint takes classifier-free guidance (a step-distilled one does not)."""
    """Whether ``lora.formats: [kohya]`` may write this family's adapters (:meth:`kohya_state_dict`):
    kohya's key names, which ComfyUI, AUTOMATIC1111 and diffusers read, are settled for the UNet
    families and FLUX only."""

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

    def repeated_block_modules(self) -> list[torch.nn.Module]:
        """The denoiser's repeated blocks: the classes diffusers names in its ``_repeated_blocks``,
        else :attr:`repeated_blocks`."""
        names = set(getattr(self.denoiser, "_repeated_blocks", None) or self.repeated_blocks)
        return [m for m in self.denoiser.modules() if type(m).__name__ in names]

    def compile_repeated_blocks(self) -> None:
        """Regional compilation: ``torch.compile`` each repeated block of the denoiser in place
        (:meth:`repeated_block_modules`). The blocks share code, so the compiler traces each
        distinct one once instead of the whole model (on the SDXL proportions at 1/8 width: about
        80 s instead of many minutes on 2 CPU cores)."""
        blocks = self.repeated_block_modules()
        if not blocks:
            raise FamilyError(f"compile: regional needs repeated blocks, and the {self.name} denoiser "
                              f"{type(self.denoiser).__name__} names none; use compile: true")
        for block in blocks:
            block.compile()

    def _require(self, component: str, why: str):
        module = getattr(self.pipe, component, None)
        if module is None:
            raise FamilyError(
                f"{why} needs the {component}, which was not loaded "
                f"(load_vae / load_text_encoders=False, or the latent cache is in use)"
            )
        return module

    # ----------------------------------------------------------------------------- batches
    def inputs(self, batch: dict, texts: list[list[str]], generator: Generators = None):
        """A training batch as what the denoiser takes: ``(latents, cond)``.

        Uncached batches run the VAE and text encoders; cached ones (``latent_mean`` in the batch)
        sample from the stored posterior and take the stored embeddings of ``texts`` (each row's
        prompt's or its captions', :func:`~diffalign.families.conditioning.stored_texts`). Both
        draw the posterior noise the same way, so the same ``generator`` gives the same latents.

        Args:
            batch: from :func:`diffalign.data.loader.collate_groups`.
            texts: ``B`` lists of ``K`` strings, the text conditioning each image (cached: each
                row's texts are its prompt or its captions, whose embeddings the cache holds).

        Returns:
            ``latents [B, K, *latent]`` and a ``Conditioning`` shaped ``[B, K, ...]``.
        """
        if "latent_mean" in batch:
            device = self.device
            latents = self.latents_from_posterior(batch["latent_mean"].to(device), batch["latent_std"].to(device), generator)
            embeds, pooled = stored_texts(batch, texts, device)
            size = tuple(side * self.vae_scale_factor for side in latents.shape[-2:])
            return latents, self.make_conditioning(embeds, pooled, self.image_info(batch, size))
        latents = self.encode_images(batch["pixels"], generator)
        return latents, self.encode_prompts(texts, image_info=self.image_info(batch, tuple(batch["pixels"].shape[-2:])))

    # ----------------------------------------------------------------------------- the denoiser
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

    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        raise NotImplementedError

    def combine_guidance(self, pred: Tensor, pred_uncond: Tensor, guidance: float) -> Tensor:
        """Classifier-free guidance of two predictions ``[B, K, *latent]``: ``u + w·(c − u)``, as
        the pipelines combine them (Qwen-Image rescales the result)."""
        return pred_uncond + guidance * (pred - pred_uncond)

    @classmethod
    def architecture(cls, path, revision: str | None = None) -> str | None:
        """Which of the family's architectures the checkpoint at ``path`` is, in words (``diffalign
        info``), read from its config files; ``None`` where the family has one."""
        return None

    def kohya_state_dict(self, peft_state: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
        """The denoiser's peft adapters in kohya's keys, for a family whose :attr:`kohya_lora` is true."""
        raise FamilyError(f"the {self.name} family has no kohya LoRA layout; keep lora.formats=[diffusers]")

    def denoiser_layout(self, values: Tensor) -> Tensor:
        """``[N, *latent]`` values in the layout the raw denoiser returns them: the same tensor for
        every family but FLUX, whose transformer returns packed tokens. A stand-in denoiser (the
        contract tests') answers in this layout, so it passes through the family's own unpacking."""
        return values


def input_dtype(model, default: torch.nn.Module) -> torch.dtype:
    """The dtype to feed ``model``: that of its first parameter (the input convolution or patch
    embedding; LoRA's fp32 adapters come later), or ``default``'s when ``model`` is a plain
    callable. Read from the module actually called, so a frozen bf16 reference copy gets bf16
    inputs while the fp32 policy gets fp32; diffusers' ``.dtype`` property would walk every
    submodule on each call (about 0.1 s per step on SDXL-sized models)."""
    module = model if isinstance(model, torch.nn.Module) else default
    return next(module.parameters()).dtype


__all__ = ["TIME_SAMPLINGS", "Conditioning", "FamilyError", "Generators", "ModelFamily", "group_prompts",
           "input_dtype", "read_model_index", "untileable", "vae_downsampling", "vae_latent_numel"]
