"""The step-aware preference model (SPM) of SPO: Liang et al., "Aesthetic Post-Training Diffusion
Models from Generic Preferences with Step-by-step Preference Optimization" (arXiv 2406.04314, CVPR
2025; code RockeyCoss/SPO).

A PickScore (CLIP-H/14) whose vision tower is told the diffusion time, DiT-style (Peebles & Xie,
2023, adaLN): a sinusoidal + MLP embedding ``e(t)`` of the time feeds, in every vision layer ``l``,
a SiLU + Linear that gives ``(shift, scale, gate)`` for the attention and for the MLP branch::

    h ← h + gate_a(e) · Attn(LN1(h) · (1 + scale_a(e)) + shift_a(e))
    h ← h + gate_m(e) · MLP(LN2(h) · (1 + scale_m(e)) + shift_m(e))

and a SiLU + Linear ``(shift, scale)`` on the pooled output: ``p ← p · (1 + scale) + shift``. The
score is PickScore's::

    S(x̂0, t, c) = exp(logit_scale) · cos( f_img(x̂0, t), f_txt(c) )

What it scores is never a noisy latent: it is the VAE-decoded one-step estimate ``x̂0`` of a noisy
latent (:func:`pixels_from_noisy`), in [0, 1].

Time: diffalign's ``t`` is the normalised noise level in [0, 1]; the timestep embedder is fed
``t · 999``, the DDPM index 0–999 the authors' models were trained on (for SD1.5/2.1 and SDXL
``t · 999`` *is* the UNet's timestep index; for other families it is an untested stand-in).

Initialisation: every adaLN Linear has zero weight, zero shift/scale bias and gate bias 1, so an
untrained SPM scores exactly as its CLIP/PickScore backbone does, at every ``t``; the time MLP
starts at N(0, 0.02) as in DiT (it gets gradients once the adaLN weights move off zero).

Shapes: ``pixels [B, 3, H, W]`` in [0, 1], ``t [B]`` (or one float), ``prompts`` B strings;
scores ``[B]`` float32. Layouts on disk: :meth:`StepAwarePreferenceModel.save_pretrained` (ours)
and the authors' released ``.bin`` (:meth:`StepAwarePreferenceModel.from_authors_checkpoint`, through
the key map of :mod:`~diffalign.rewards.step_aware_authors`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffalign.rewards.base import RewardLoadError, batch_size_of, expand_prompts, finish
from diffalign.rewards.clip import CLIPReward, HFTokenize, Tokenize, load_clip_parts, processor_source
from diffalign.rewards.loading import assign_state, find_file, load_checkpoint, load_pretrained, load_tokenizer, read_json
from diffalign.rewards.preprocess import ImageTransform, pil_to_tensor, transform_from_processor
from diffalign.rewards.step_aware_authors import (AUTHORS_FILES, AUTHORS_KEY_MAP, AUTHORS_REPO, authors_release, authors_to_ours,
                                                  ours_to_authors)

DDPM_INDEX_SCALE = 999.0
"""``t · 999`` is what the timestep embedder sees: the DDPM index the authors trained on."""
FREQUENCY_SIZE = 256  # width of the sinusoidal embedding (DiT's and the authors' choice)
FORMAT = "diffalign-step-aware"
CONFIG = "step_aware.json"
TIME_WEIGHTS = "time_conditioning.safetensors"
PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass(frozen=True)
class SPMTransform(ImageTransform):
    """The authors' tensor preprocessing (``get_preference_score``): shortest side → ``size`` by
    plain bicubic ``F.interpolate`` (no antialiasing; sides ``int(side · scale + 0.5)``),
    torchvision's centre crop (``crop_offset="round"``), clamp to [0, 1], CLIP mean/std.
    PIL images go through the same tensor path (the authors never scored PIL images)."""

    crop_offset: str = "round"

    def geometry(self, pixels: Tensor) -> Tensor:
        height, width = pixels.shape[-2:]
        scale = self.size / min(height, width)
        resized = (int(height * scale + 0.5), int(width * scale + 0.5))
        if resized != (height, width):
            pixels = F.interpolate(pixels, size=resized, mode="bicubic", align_corners=False)
        top, left = self._crop_corner(*resized)
        # Clamped after resizing: bicubic overshoots [0, 1] at edges, and the authors clamp here.
        return pixels[..., top : top + self.size, left : left + self.size].clamp(0, 1)

    def pil_pixels(self, image) -> Tensor:
        return self.geometry(pil_to_tensor(image.convert("RGB"))[None])[0]


class TimeConditioning(nn.Module):
    """The parameters SPM adds to CLIP: timestep MLP, per-layer adaLN, pooled adaLN.

    Attributes:
        embedder: diffusers' ``TimestepEmbedding`` (Linear → SiLU → Linear), ``F → W``.
        layers: one ``Linear(W, 6W)`` per vision layer: shift, scale, gate (attention), then
            shift, scale, gate (MLP), in that order along the output.
        pooled: ``Linear(W, 2W)``: shift, scale of the pooled output.
    """

    def __init__(self, width: int, num_layers: int, frequency_size: int = FREQUENCY_SIZE):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding

        self.frequency_size = frequency_size
        self.embedder = TimestepEmbedding(frequency_size, width, act_fn="silu")
        self.layers = nn.ModuleList(nn.Linear(width, 6 * width) for _ in range(num_layers))
        self.pooled = nn.Linear(width, 2 * width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The identity initialisation (module docstring): adaLN off, gates open; the time MLP's
        N(0, 0.02) draws come from ``generator`` (default: the global RNG)."""
        for linear in (self.embedder.linear_1, self.embedder.linear_2):
            nn.init.normal_(linear.weight, std=0.02, generator=generator)
            nn.init.zeros_(linear.bias)
        width = self.pooled.in_features
        for linear in self.layers:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
            linear.bias[2 * width : 3 * width] = 1  # gate of the attention branch
            linear.bias[5 * width :] = 1  # gate of the MLP branch
        nn.init.zeros_(self.pooled.weight)
        nn.init.zeros_(self.pooled.bias)

    def forward(self, t: Tensor) -> Tensor:
        """``[B]`` normalised times → ``[B, W]`` embedding ``e(t)`` of ``t · 999``."""
        from diffusers.models.embeddings import get_timestep_embedding

        # flip_sin_to_cos + shift 0 is DiT's (and the authors') [cos, sin] with frequencies
        # exp(−ln(10⁴)·k/(F/2)).
        freq = get_timestep_embedding(t.float() * DDPM_INDEX_SCALE, self.frequency_size,
                                      flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.embedder(freq.to(self.pooled.weight.dtype))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x · (1 + scale) + shift`` with ``shift, scale [B, 1, W]`` broadcast over tokens."""
    return x * (1 + scale) + shift


class StepAwarePreferenceModel(CLIPReward):
    """SPM: PickScore with a time-conditioned vision tower (module docstring).

    ``score(images, prompts)`` is the score of clean images (``t = 0``), so the model can stand
    wherever a :class:`~diffalign.rewards.base.RewardModel` is used; :meth:`score_noisy` is what
    SPO calls during sampling.

    Args:
        clip: a transformers ``CLIPModel`` (PickScore_v1 for the paper).
        transform: preprocessing; default :class:`SPMTransform` at the CLIP image size.
        tokenize: prompts → tokens (CLIP's, 77 tokens).
        time: the time conditioning; default a new, identity-initialised one.
    """

    name: ClassVar[str] = "step_aware"

    def __init__(self, clip, transform: ImageTransform | None = None, tokenize: Tokenize | None = None,
                 time: TimeConditioning | None = None):
        vision = clip.config.vision_config
        super().__init__(clip, transform or SPMTransform(vision.image_size), tokenize)
        self.time = time if time is not None else TimeConditioning(vision.hidden_size, vision.num_hidden_layers)

    # ------------------------------------------------------------------------------- scores
    def image_features(self, pixels: Tensor, t: Tensor | None = None) -> Tensor:
        """``[B, E]`` unit-norm embeddings of preprocessed ``pixels [B, 3, S, S]`` at times ``t [B]``
        (``None``: 0)."""
        if t is None:
            t = pixels.new_zeros(pixels.shape[0])
        vision = self.clip.vision_model
        emb = F.silu(self.time(t.to(pixels.device)))  # the SiLU in front of every adaLN Linear
        hidden = vision.pre_layrnorm(vision.embeddings(pixels))
        for layer, linear in zip(vision.encoder.layers, self.time.layers):
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = linear(emb)[:, None].chunk(6, dim=-1)
            attended, _ = layer.self_attn(hidden_states=modulate(layer.layer_norm1(hidden), shift_a, scale_a))
            hidden = hidden + gate_a * attended
            hidden = hidden + gate_m * layer.mlp(modulate(layer.layer_norm2(hidden), shift_m, scale_m))
        pooled = vision.post_layernorm(hidden[:, 0])
        shift, scale = self.time.pooled(emb).chunk(2, dim=-1)
        return F.normalize(self.clip.visual_projection(pooled * (1 + scale) + shift), dim=-1)

    def score_at(self, pixels: Tensor, prompts: list[str], t: Tensor) -> Tensor:
        """``[B]`` exp(logit_scale) · cos of preprocessed ``pixels`` at times ``t [B]``."""
        return self.logit_scale() * (self.image_features(pixels, t) * self.text_features(prompts)).sum(-1)

    def score_noisy(self, pixels: Tensor, prompts: str | Sequence[str], t: Tensor | float) -> Tensor:
        """``S(x̂0, t, c)``: ``[B]`` float32 scores of decoded one-step estimates at their noise level.

        Args:
            pixels: ``[B, 3, H, W]`` in [0, 1]: ``x̂0`` of noisy latents, decoded
                (:func:`pixels_from_noisy`), any size (resized and cropped here).
            prompts: one per image, or one for all.
            t: ``[B]`` normalised times in [0, 1] (0 = clean), or one float for all.

        Differentiable with respect to ``pixels`` and to whichever parameters require grad.
        """
        count = batch_size_of(pixels)
        texts = expand_prompts(prompts, count)
        times = torch.as_tensor(t, dtype=torch.float32, device=self.device).reshape(-1)
        if times.numel() not in (1, count):
            raise ValueError(f"got {count} images but {times.numel()} times; give one time per image or one for all")
        times = times.expand(count)
        inputs = self.transform(pixels).to(self.device, self.dtype)
        return self.score_at(inputs, texts, times).float()

    def forward(self, pixels: Tensor, prompts: str | Sequence[str], t: Tensor | float) -> Tensor:
        """:meth:`score_noisy`, as ``forward`` so a DistributedDataParallel wrapper can train it."""
        return self.score_noisy(pixels, prompts, t)

    def preference_logits_noisy(self, pixels: Tensor, prompts: str | Sequence[str], t: Tensor | float) -> Tensor:
        """``[B]`` logits whose softmax over a group's images is the model's choice probability
        (the logits it was trained on; equal to :meth:`score_noisy`)."""
        return self.score_noisy(pixels, prompts, t)

    def group_probs_noisy(self, pixels: Tensor, prompt: str, t: float) -> Tensor:
        """``[K]`` probabilities that each of one prompt's ``K`` decoded estimates is preferred at ``t``."""
        return torch.softmax(self.preference_logits_noisy(pixels, prompt, t), dim=0)

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        # The registry contract's clean-image score: t = 0.
        return self.score_at(pixels, prompts, pixels.new_zeros(pixels.shape[0]))

    # ------------------------------------------------------------------------------- training
    def train_parameters(self, parts: str = "all") -> list[nn.Parameter]:
        """Switch to training and return what trains: ``"all"`` (the paper: the whole SPM) or
        ``"time"`` (only the time embedder and adaLN layers; CLIP stays frozen)."""
        if parts not in ("all", "time"):
            raise ValueError(f"parts must be 'all' or 'time', got {parts!r}")
        self.train().requires_grad_(parts == "all")
        self.time.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------- loading
    @classmethod
    def from_clip(cls, path_or_id: str | os.PathLike | None = None, processor: str | os.PathLike | None = None,
                  dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> StepAwarePreferenceModel:
        """A new SPM on a CLIP/PickScore ``CLIPModel`` (default PickScore_v1, as the paper), time
        conditioning at identity; eval mode, frozen."""
        path_or_id = path_or_id or PICKSCORE
        source = processor_source(path_or_id, processor, PICKSCORE_PROCESSOR)
        clip, transform, tokenize = load_clip_parts(path_or_id, source, "StepAwarePreferenceModel", dtype)
        return finish(cls(clip, _spm_transform(transform), tokenize), dtype, device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, processor: str | os.PathLike | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> StepAwarePreferenceModel:
        """Load a folder written by :meth:`save_pretrained`; eval mode, frozen.

        Raises:
            RewardLoadError: not such a folder (naming what is missing and what to use instead),
                or weights that do not fit.
        """
        from safetensors.torch import load_file
        from transformers import CLIPModel

        folder = Path(path).expanduser()
        what = "StepAwarePreferenceModel"
        if not (folder / CONFIG).is_file():
            raise RewardLoadError(
                f"{what}: {folder} has no {CONFIG}, so it is not a folder written by save_pretrained. For a CLIP or "
                "PickScore folder use StepAwarePreferenceModel.from_clip; for the authors' .bin, from_authors_checkpoint"
            )
        config = json.loads((folder / CONFIG).read_text())
        if config.get("format") != FORMAT:
            raise RewardLoadError(f"{what}: {folder / CONFIG} has format {config.get('format')!r}, expected {FORMAT!r}")
        clip = load_pretrained(CLIPModel, folder / "clip", what, dtype=dtype)
        vision = clip.config.vision_config
        time = TimeConditioning(vision.hidden_size, vision.num_hidden_layers, config["frequency_size"])
        assign_state(time, load_file(str(find_file(folder, [TIME_WEIGHTS], what))), what, folder / TIME_WEIGHTS, dtype)
        source = str(processor or folder)
        transform = _spm_transform(transform_from_processor(read_json(source, "preprocessor_config.json", what)))
        return finish(cls(clip, transform, HFTokenize(load_tokenizer(source, what)), time), dtype, device)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``step_aware.json``, ``clip/`` (a transformers ``CLIPModel`` folder), the time
        weights (safetensors), the tokenizer and ``preprocessor_config.json`` into ``path``.

        The CLIP weights sit in a subfolder so the folder is never mistaken for a plain CLIP
        model (which would silently drop the time conditioning)."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        if not isinstance(self.tokenize, HFTokenize):
            raise TypeError("save_pretrained needs a transformers tokenizer (HFTokenize)")
        self.clip.save_pretrained(folder / "clip", safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.time.state_dict().items()}, str(folder / TIME_WEIGHTS))
        self.tokenize.tokenizer.save_pretrained(folder)
        size = self.transform.size
        processor = {"crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
                     "image_mean": list(self.transform.mean), "image_std": list(self.transform.std), "resample": 3}
        (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
        config = {"format": FORMAT, "version": 1, "frequency_size": self.time.frequency_size,
                  "ddpm_index_scale": DDPM_INDEX_SCALE}
        (folder / CONFIG).write_text(json.dumps(config, indent=2))
        return folder

    @classmethod
    def from_authors_checkpoint(cls, path: str | os.PathLike, clip_source: str | os.PathLike = PICKSCORE,
                                processor: str | os.PathLike | None = None, release: str = "v1-5",
                                dtype: torch.dtype | None = None,
                                device: str | torch.device | None = None, *,
                                base: str | None = None) -> StepAwarePreferenceModel:
        """Load the authors' released state dict (``torch.save`` of their ``StepAwarePreferenceModel``)
        through :func:`~diffalign.rewards.step_aware_authors.authors_to_ours`; eval mode, frozen.

        Args:
            path: the ``.bin``, or a folder / hub repo (:data:`AUTHORS_REPO`) holding
                ``AUTHORS_FILES[release]``.
            clip_source: where the ``CLIPConfig`` (architecture only; every weight comes from
                ``path``) is read: PickScore_v1 for both released models.
            processor: tokenizer + ``preprocessor_config.json``; default as for PickScore.
            release: ``"v1-5"`` (``sd-v1-5_step-aware_preference_model.bin``) or ``"xl"``
                (``sdxl_step-aware_preference_model.bin``): which released file to look for in a
                folder or repo (:data:`AUTHORS_FILES`).
            base: the old name of ``release``, with its old values: deprecated, warns.

        Raises:
            RewardLoadError: the file is missing, unpickles code, holds keys the map does not
                know, or lacks keys the architecture needs (each named).
        """
        from accelerate import init_empty_weights
        from transformers import CLIPConfig, CLIPModel

        what = "StepAwarePreferenceModel (authors' checkpoint)"
        if base is not None:
            # The keyword named a base model; what it picks is a released file. Kept until the release after 0.1.
            release = authors_release(base, warn=False)
            warnings.warn(f"from_authors_checkpoint(base={base!r}) is deprecated: use release={release!r}",
                          DeprecationWarning, stacklevel=2)
        checkpoint = find_file(path, [AUTHORS_FILES[authors_release(release)]], what)
        state = authors_to_ours(load_checkpoint(checkpoint), source=checkpoint)
        try:
            config = CLIPConfig.from_pretrained(str(clip_source))
        except OSError as err:
            raise RewardLoadError(f"{what}: could not read the CLIP config from {clip_source}: {err}") from err
        source = processor_source(clip_source, processor, PICKSCORE_PROCESSOR)
        transform = _spm_transform(transform_from_processor(read_json(source, "preprocessor_config.json", what)))
        with init_empty_weights():  # every weight comes from the checkpoint: allocate nothing twice
            model = cls(CLIPModel(config), transform, HFTokenize(load_tokenizer(source, what)))
        assign_state(model, state, what, checkpoint, dtype)
        return finish(model, dtype, device)


def _spm_transform(transform: ImageTransform) -> SPMTransform:
    return SPMTransform(size=transform.size, mean=transform.mean, std=transform.std)


# ----------------------------------------------------------------------------------- x̂0 pixels
@torch.no_grad()
def pixels_from_noisy(family, model, noisy_latents: Tensor, t: Tensor, cond, uncond=None, guidance: float = 5.0) -> Tensor:
    """What an SPM scores: the base model's one-step clean estimate of noisy latents, decoded.

    ``x̂0 = split_prediction(ε̂_cfg, x_t, t)`` with ``ε̂_cfg = ε̂(∅) + w·(ε̂(c) − ε̂(∅))`` (one
    forward per conditioning; ``w = 5`` in the paper), then the VAE decode, mapped to [0, 1].

    Args:
        family: a loaded :class:`~diffalign.families.base.ModelFamily`.
        model: its denoiser (frozen here: no gradients are taken).
        noisy_latents: ``[B, K, *latent]``; t: ``[B]`` normalised times.
        cond, uncond: ``[B, K, ...]`` conditionings (``uncond`` only needed for ``guidance != 1``).

    Returns:
        ``[B, K, 3, H, W]`` float32 in [0, 1].
    """
    pred = family.predict(model, noisy_latents, t, cond).float()
    if guidance != 1:
        if uncond is None:
            raise ValueError("guidance other than 1 needs the unconditional conditioning (uncond)")
        pred_uncond = family.predict(model, noisy_latents, t, uncond).float()
        pred = pred_uncond + guidance * (pred - pred_uncond)
    _, x0 = family.split_prediction(pred, noisy_latents.float(), t)
    return (family.decode(x0).float() / 2 + 0.5).clamp(0, 1)


# The authors' file names and key map live in step_aware_authors; their names stay importable from here.
__all__ = ["AUTHORS_FILES", "AUTHORS_KEY_MAP", "AUTHORS_REPO", "DDPM_INDEX_SCALE", "SPMTransform",
           "StepAwarePreferenceModel", "TimeConditioning", "authors_to_ours", "ours_to_authors", "pixels_from_noisy"]
