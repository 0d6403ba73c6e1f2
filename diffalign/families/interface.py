"""The written interface of a model family: everything the rest of diffalign asks of one.

:class:`FamilyInterface` lists every member that code outside :mod:`diffalign.families` uses
(trainer, steps, objectives, sampler, inversion, latent cache, start-up checks, evaluation,
benchmarks, :mod:`diffalign.testing`), with shapes. :class:`~diffalign.families.base.ModelFamily`
provides almost all of it from a few template hooks, listed in
:class:`~diffalign.families.hooks.FamilyHooks`. Adding a family (Qwen-Image, say; FLUX is the latest example) is:

1. ``families/<name>.py``: subclass ``ModelFamily`` (first ``FlowMatching`` for a rectified-flow
   model, which fills the noise hooks);
2. fill ``FamilyHooks`` (the class facts and the ``_flat`` maths), and override the members
   here whose defaults do not fit: ``media``, ``pixel_ndim``, ``clip_problem``,
   ``latent_frames`` and ``check_pixels`` for video; ``pixel_multiple`` for a patch size;
   ``image_info`` (and the hook ``_with_image_info``) for conditioning besides text;
   ``latent_scale`` for per-channel scaling; ``kohya_lora``; ``tiny_kinds`` with
   ``tiny_components`` (and ``_make_tiny_scheduler``) so the tests can build it offline;
3. register it in ``FAMILIES`` (and in the detection of :func:`diffalign.families.detect_family`);
4. ``tests/families/test_interface.py`` then checks it against both lists.

Shapes: ``B`` groups (prompts) in a batch, ``K`` images per group (best first), ``*latent`` one
item's latent (``C, h, w``; a video's ``C, f, h, w``), ``*pixels`` one item's pixels
(``3, H, W``; a video's ``3, F, H, W``), ``L, D`` text tokens and width, ``P`` pooled width,
``N`` a flat batch. Time ``t`` is the normalised noise level in [0, 1] (0 clean, 1 pure noise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from diffalign.families.conditioning import Conditioning


@runtime_checkable
class FamilyInterface(Protocol):
    """What a loaded family offers (class facts are readable before any weights load)."""

    # ------------------------------------------------------------------ class facts (no weights)
    name: ClassVar[str]
    """Registry and config name (``model.family``); also names cache folders."""
    pipeline_class: ClassVar[str]
    """The diffusers pipeline class it wraps (loading, detection, ``save_lora_weights``)."""
    denoiser_name: ClassVar[str]
    """The pipeline attribute that is trained (``"unet"``, ``"transformer"``); LoRA keys' prefix."""
    text_components: ClassVar[tuple[str, ...]]
    """Pipeline components left out by ``load_text_encoders=False`` (the latent cache)."""
    media: ClassVar[str]
    """``"image"`` or ``"video"``: what its VAE encodes and its pipeline makes."""
    pixel_ndim: ClassVar[int]
    """Dimensions of one item's pixels: 3 (``3, H, W``) or 4 (``3, F, H, W``)."""
    default_time_sampling: ClassVar[str]
    """``time_sampling`` when the config leaves it unset."""
    loss_weightings: ClassVar[tuple[str, ...]]
    """The ``loss_weighting`` values it accepts."""
    repeated_blocks: ClassVar[tuple[str, ...]]
    """Denoiser block classes for ``compile: regional`` where diffusers names none."""
    kohya_lora: ClassVar[bool]
    """Whether ``lora.formats: [kohya]`` may write its adapters (settled key names: UNets)."""
    tiny_kinds: ClassVar[tuple[str, ...]]
    """Its tiny offline pipelines' names (``diffalign.testing.save_tiny_pipeline``)."""
    real_sizes: ClassVar[tuple[str, ...]]
    """The benchmark sizes it builds with random weights (``"real"``, ``"mini"``); may be empty."""
    real_size_resolution: ClassVar[int | None]
    """Pixels per side the released checkpoint trains at (benchmarks' default)."""

    @classmethod
    def from_pretrained(cls, path, **options) -> FamilyInterface:
        """Load a diffusers folder or hub id (``revision``, ``variant``, ``dtype``, ``device``,
        ``load_vae``, ``load_text_encoders``, ``attention`` and the family's maths options)."""

    @classmethod
    def pixel_multiple(cls, path, revision: str | None = None) -> int:
        """Image sides at ``path`` must be multiples of this (VAE factor × patch), from configs only."""

    @classmethod
    def clip_problem(cls, frames: int) -> str | None:
        """The frame rule: why clips of ``frames`` frames cannot be encoded (``None``: they can;
        an image family always says why). Wan: ``frames ≡ 1 (mod 4)``."""

    @classmethod
    def tiny_scheduler(cls, kind: str) -> Any:
        """The scheduler of tiny pipeline ``kind`` (the released pipelines' settings), on the CPU."""

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        """Components of tiny pipeline ``kind`` for ``getattr(diffusers, pipeline_class)(**them)``."""

    @classmethod
    def real_size_denoiser(cls) -> torch.nn.Module:
        """The released denoiser's architecture, random weights, on the default device."""

    @classmethod
    def real_size_components(cls, use_t5: bool = False, size: str = "real") -> dict:
        """Components of the released pipeline's architecture (``size`` in ``real_sizes``)."""

    # ------------------------------------------------------------------ state of a loaded family
    pipe: Any
    """The loaded diffusers pipeline (validation and the synthetic builder call it)."""
    path: str | None
    """The folder or hub id it was loaded from (cache fingerprints, config-only reads)."""
    revision: str | None
    prediction_type: str
    """``"epsilon"``, ``"v_prediction"`` or ``"flow"``."""
    time_sampling: str
    loss_weighting: str

    @property
    def denoiser(self) -> torch.nn.Module:
        """The trained module (UNet or transformer)."""

    @property
    def device(self) -> torch.device:
        """The denoiser's device."""

    @property
    def latent_channels(self) -> int:
        """``C`` of one item's latent (FLUX: a quarter of its transformer's packed input)."""

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side (``H = h · f``)."""

    @property
    def latent_scale(self) -> float | Tensor:
        """The VAE latents' scale: a number, or per channel ``[C, 1, ...]`` (Wan)."""

    @property
    def num_train_timesteps(self) -> int:
        """``N``, the scheduler's training timesteps."""

    def repeated_block_modules(self) -> list:
        """The denoiser's repeated blocks (what ``compile: regional`` compiles; empty: none)."""

    def compile_repeated_blocks(self) -> None:
        """``compile: regional``: ``torch.compile`` each repeated denoiser block in place."""

    # ------------------------------------------------------------------ inputs
    def inputs(self, batch: dict, texts: list[list[str]], generator=None) -> tuple[Tensor, Conditioning]:
        """A training batch (cached or not) as ``(latents [B, K, *latent], cond [B, K, ...])``."""

    def encode_prompts(self, prompts, group_size: int | None = None, image_info: dict | None = None) -> Conditioning:
        """``B`` prompts (shared by ``group_size`` images) or ``B × K`` captions → ``[B, K, ...]``:
        ``prompt_embeds [B, K, L, D]``, ``pooled [B, K, P]`` or None, ``time_ids [B, K, 6]`` or None."""

    def make_conditioning(self, prompt_embeds: Tensor, pooled: Tensor | None = None,
                          image_info: dict | None = None) -> Conditioning:
        """Conditioning from stored embeddings ``[B, K, L, D]`` (and ``[B, K, P]``)."""

    def image_info(self, batch: dict, size: tuple[int, int]) -> dict | None:
        """Per-image conditioning besides text from a batch trained at ``size`` (SDXL: sizes, crops)."""

    def encode_images(self, pixels: Tensor, generator=None) -> Tensor:
        """``[..., *pixels]`` in [-1, 1] → scaled latents ``[..., *latent]`` (a posterior sample)."""

    def encode_posterior(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """``[..., *pixels]`` → the unscaled VAE posterior ``(mean, std)``, each ``[..., *latent]``."""

    def latents_from_posterior(self, mean: Tensor, std: Tensor, generator=None) -> Tensor:
        """Draw ``mean + std·ε`` and scale it: ``[..., *latent]`` (the cached path)."""

    def decode(self, latents: Tensor) -> Tensor:
        """``[..., *latent]`` → pixels ``[..., *pixels]`` in [-1, 1]."""

    def latent_frames(self, frames: int) -> int:
        """Latent frames ``f`` of a ``frames``-frame clip; FamilyError where the VAE cannot take it."""

    def check_pixels(self, pixels: Tensor) -> None:
        """Raise FamilyError for pixels the VAE cannot encode (video: the frame count)."""

    # ------------------------------------------------------------------ noise and the denoiser
    def sample_noise_and_time(self, latents: Tensor, generator=None) -> tuple[Tensor, Tensor]:
        """One noise and time per group: ``noise [B, K, *latent]`` (equal along K), ``t [B]``."""

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = a_t·x0 + s_t·ε``: ``[B, K, *latent]`` at group times ``t [B]``."""

    def target(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser should predict (ε, v or flow velocity): ``[B, K, *latent]``."""

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-group weight ``[B]`` of the denoising error."""

    def predict(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """``model`` on ``noisy [B, K, *latent]`` at ``t [B]`` in one forward: ``[B, K, *latent]``."""

    def combine_guidance(self, pred: Tensor, pred_uncond: Tensor, guidance: float) -> Tensor:
        """Classifier-free guidance of the conditional and unconditional predictions ``[B, K, *latent]``."""

    takes_guidance: bool
    """Whether the checkpoint takes classifier-free guidance; ``False`` (a step-distilled FLUX.2
    [klein]): :func:`~diffalign.solver.guided` ignores ``guidance``, as its pipeline does, and warns."""

    @classmethod
    def architecture(cls, path, revision: str | None = None) -> str | None:
        """The checkpoint's architecture within the family, in words (SD3.5's MMDiT-X), or ``None``."""

    def kohya_state_dict(self, peft_state: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
        """The peft adapters ``{"….lora_A.weight": [r, in], "….lora_B.weight": [out, r]}`` in
        kohya's keys (``lora_unet_….lora_down.weight``, ``….lora_up.weight``, ``….alpha``)."""

    def denoiser_layout(self, values: Tensor) -> Tensor:
        """``[N, *latent]`` in the layout the raw denoiser returns (FLUX: packed tokens; others: as given)."""

    def denoising_error(self, model, latents: Tensor, cond: Conditioning, noise: Tensor, t: Tensor) -> Tensor:
        """Weighted mean squared error per image, fp32 ``[B, K]``, differentiable in ``model``."""

    def prediction_error(self, pred: Tensor, target: Tensor, t: Tensor) -> Tensor:
        """Weighted mean squared error ``[B, K]`` of predictions ``[B, K, *latent]`` against ``target``."""

    def noise_scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a_t, s_t)``, each ``[N]`` float32, at times ``t [N]``."""

    def sampling_times(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` falling times of its sampler, ending at 0, for latents ``(h, w)`` of
        ``latent_size`` (FLUX's shift depends on it; the other families ignore it)."""

    def inversion_levels(self, steps: int, latent_size: tuple[int, int] | None = None) -> Tensor:
        """``[steps + 1]`` rising times of the official inversion grid: step ``k`` goes from level
        ``k`` (where the model is asked) to ``k + 1``; the first may lie below 0 (SD: DDIM's
        initial level, which ``noise_scales`` gives for a negative time)."""

    def final_scales(self) -> tuple[float, float]:
        """``(a, s)`` of the level a sampler's last step lands on."""

    def split_prediction(self, pred: Tensor, noisy: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """A prediction ``[B, K, *latent]`` → ``(ε̂, x̂0)``, each ``[B, K, *latent]``."""

    def implied_noise(self, latents: Tensor, noisy: Tensor, t: Tensor) -> Tensor:
        """The noise ``τ`` with ``noisy = a_t·latents + s_t·τ``: ``[B, K, *latent]``."""
