"""Typed configs: dataclasses loaded from YAML, with dotted command-line overrides.

The dataclasses are the single source of truth for every key, its type and its default.
:func:`load_config` checks a YAML file against them *before* any model loads and reports every
problem at once, naming the key and where its value came from (the file or an override)::

    cfg = load_config("training/configs/sdxl/diffusion_dpo.yaml", ["optim.lr=1e-5", "lora.rank=16"])

Override values are parsed as YAML (``lora=null``, ``lora.target_modules=[to_q,to_v]``). Floats
may be written ``1e-5``, which YAML 1.1 would otherwise read as a string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from diffalign.arguments import MAX_SIDE
from diffalign.typed_config import (  # noqa: F401  (re-exported: the names users import from here)
    AT_LEAST_0,
    AT_LEAST_1,
    LOCAL_OR_HUB,
    MUST_EXIST,
    POSITIVE,
    ConfigError,
    bounds,
    from_dict,
    lookup,
    to_dict,
)


SIDE = bounds(8, MAX_SIDE)
"""An image side in pixels, as the commands take it."""
SEED = bounds(0, 2**63 - 1)
"""What ``torch.Generator.manual_seed`` takes."""

DTYPE_NAMES = ("fp32", "fp16", "bf16")
"""The dtype names configs and commands accept."""


def torch_dtype(name: str):
    """``"fp32"`` (or accelerate's ``"no"``), ``"fp16"``, ``"bf16"`` → the torch dtype."""
    import torch

    return {"fp32": torch.float32, "no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def cache_root() -> Path:
    """diffalign's own cache (toy models, weight digests): ``$DIFFALIGN_CACHE``, else
    ``$XDG_CACHE_HOME/diffalign``, else ``~/.cache/diffalign``."""
    import os

    if os.environ.get("DIFFALIGN_CACHE"):
        return Path(os.environ["DIFFALIGN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffalign"


@dataclass
class ModelConfig:
    """The base model and the family maths options (see :mod:`diffalign.families`)."""

    path: str = field(metadata=LOCAL_OR_HUB)
    """Diffusers pipeline folder or hub id."""
    family: str | None = field(default=None, metadata={"complete": lambda value, key, errors: _known_family(value, key, errors)})
    """A name in :data:`diffalign.families.FAMILIES`; ``None`` detects it from ``model_index.json``."""
    revision: str | None = None
    variant: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype the weights load in (mixed precision is the trainer's ``mixed_precision``)."""
    attention: Literal["sdpa", "xformers"] = "sdpa"
    time_sampling: Literal["uniform", "logit_normal", "mode"] | None = None
    """``None``: uniform for UNets, logit-normal for SD3."""
    logit_mean: float = 0.0
    logit_std: float = field(default=1.0, metadata=POSITIVE)
    mode_scale: float = 1.29
    loss_weighting: Literal["none", "min_snr", "sigma_sqrt", "cosmap"] = "none"
    snr_gamma: float = field(default=5.0, metadata=POSITIVE)
    use_t5: bool = True
    """SD3 only: ``False`` leaves the T5 encoder out."""
    max_sequence_length: int | None = field(default=None, metadata=AT_LEAST_1)
    """T5 tokens of SD3 (``None``: 256), FLUX and Wan (``None``: 512), as their pipelines use."""
    embedded_guidance: float = 3.5
    """FLUX.1 [dev] only: the guidance scale its guidance-distilled transformer takes as an input
    (the pipeline's default), in training and sampling."""
    experts: list[Literal["high_noise", "low_noise"]] | None = None
    """Wan 2.2 A14B only: the experts a run trains (``None``: both). The high-noise expert
    (``transformer``) denoises timesteps ≥ ``boundary_ratio``·N, the low-noise one
    (``transformer_2``) those below; a one-expert run draws its training times in its expert's
    range only and leaves the other expert's weights untouched."""

    def family_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`diffalign.families.load`, which drops the
        family-specific ones left at their defaults for families they do not apply to."""
        return dict(
            family=self.family, revision=self.revision, variant=self.variant,
            dtype=torch_dtype(self.dtype),
            attention=self.attention, time_sampling=self.time_sampling, logit_mean=self.logit_mean,
            logit_std=self.logit_std, mode_scale=self.mode_scale, loss_weighting=self.loss_weighting,
            snr_gamma=self.snr_gamma, use_t5=self.use_t5, max_sequence_length=self.max_sequence_length,
            embedded_guidance=self.embedded_guidance, experts=self.experts,
        )


@dataclass
class DataConfig:
    """Where the preference data is and how images are prepared."""

    path: str = field(metadata=MUST_EXIST)
    """Folder of the on-disk preference dataset (``manifest.json`` + Parquet shards)."""
    resolution: int = field(default=512, metadata=SIDE)
    """Pixels per side of the training images (centre crop); checked against free memory too."""
    frames: int | None = field(default=None, metadata=AT_LEAST_1)
    """Video datasets: frames per training clip, from each clip's start (Wan: 1 + 4n; 81 is Wan 2.1's
    5 s at 16 fps). Needed for a video dataset, refused for an image one."""
    frame_stride: int = field(default=1, metadata=AT_LEAST_1)
    """Video datasets: take every n-th frame (2 turns a 30 fps source into ~15 fps clips)."""
    center_crop: bool = True
    random_flip: bool = False
    strict: bool = False
    """``True``: an unreadable image is an error instead of being skipped and counted."""
    cache: bool | Literal["auto"] = "auto"
    """Serve latents and prompt embeddings from the latent cache (``diffalign cache``); training
    then loads neither the VAE nor the text encoders. ``auto``: use the dataset's cache for this
    model and resolution, building it first when it is missing or unfinished (once; later runs
    reuse it), wherever a cache can serve the run (see :func:`diffalign.training.checks.plan_cache`);
    ``true``: require a built cache; ``false``: encode images and prompts at every step."""
    workers: int | None = field(default=None, metadata=AT_LEAST_0)
    """DataLoader worker processes. ``None``: 4 (at most the CPU count) when a GPU trains, so image
    decoding overlaps its step; 0 on CPU, where the model already uses every core."""


@dataclass
class LoRAConfig:
    """LoRA adapters through ``peft``; ``lora: null`` in the YAML means full fine-tuning."""

    rank: int = field(default=8, metadata=AT_LEAST_1)
    alpha: float = field(default=8.0, metadata=POSITIVE)
    dropout: float = field(default=0.0, metadata=bounds(0, 1, high_open=True))
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    formats: list[Literal["diffusers", "kohya"]] = field(default_factory=lambda: ["diffusers"])
    """How the final LoRA is written: ``diffusers`` (always; ``pipeline.load_lora_weights(lora/)``)
    and ``kohya`` (also ``lora/pytorch_lora_weights_kohya.safetensors``, in the keys ComfyUI and
    AUTOMATIC1111 load; SD, SDXL and FLUX only)."""


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (diffusers' ``get_scheduler`` names)."""

    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    lr: float = field(default=1e-5, metadata=AT_LEAST_0)
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=bounds(0, 1, high_open=True))
    weight_decay: float = field(default=1e-2, metadata=AT_LEAST_0)
    eps: float = field(default=1e-8, metadata=AT_LEAST_0)
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = field(default=0, metadata=AT_LEAST_0)
    max_grad_norm: float = field(default=1.0, metadata=AT_LEAST_0)
    """Clip the gradient norm to this (0: no clipping). Either way a step whose gradient norm is
    not finite is skipped and counted, like one whose loss is not finite."""


@dataclass
class LoggingConfig:
    """Where metrics go: ``metrics.jsonl`` in the output folder always, plus a tracker."""

    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    every: int = field(default=10, metadata=AT_LEAST_1)
    """Log (and sync metrics across processes) every this many optimiser steps."""
    project: str = "diffalign"
    progress_bar: bool = True


@dataclass
class ValidationConfig:
    """Images sampled for fixed prompts during training, saved as a grid PNG."""

    prompts: list[str] = field(default_factory=list)
    every: int = field(default=0, metadata=AT_LEAST_0)
    """Every this many steps (0: only at the end, when prompts are given)."""
    num_inference_steps: int = field(default=25, metadata=AT_LEAST_1)
    guidance_scale: float = field(default=5.0, metadata=AT_LEAST_0)
    resolution: int | None = field(default=None, metadata=SIDE)
    """Defaults to ``data.resolution``."""
    seed: int = field(default=0, metadata=SEED)


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "diffusion_dpo"},
                                      metadata={"complete": lambda value, key, errors: _complete_objective(value, key, errors)})
    """``name`` plus that objective's own keys, checked against its config class when the config
    loads and filled in with its defaults (so a saved ``config.yaml`` shows every value used)."""
    rollout: dict[str, Any] | None = None
    """The sampling step's settings (SPO, Diffusion-DRO: sampler steps, η, guidance, candidates,
    ...), checked against the step's ``Settings`` and filled in with its defaults; only for an
    objective whose step samples."""
    inversion: dict[str, Any] | None = None
    """The inversion step's settings (InPO, SmPO: steps, ReNoise, η, guidance, model), checked and
    filled in likewise; only for an objective whose step inverts."""
    prompt_dropout: float | None = field(default=None, metadata=bounds(0, 1, high_open=True))
    """Share of groups trained with the empty prompt instead of theirs (the whole group, for the
    inversion and the loss alike; drawn per group from its own seed). ``None``: the objective's
    official value (``Objective.prompt_dropout``: InPO and SmPO 0.2, as their ``train.py``;
    the others 0). A cached run loads the text encoders at start to embed the empty prompt once,
    then lets them go."""
    reference_pass: bool | Literal["auto"] = "auto"
    """``auto``: where the objective's reference term does not depend on the policy (Diffusion-DPO,
    DCPO, RankDPO) and the latent cache serves the run, compute the reference's errors once before training, in a pass over the run's
    batches (one reference forward per group and epoch, without gradient), keep them beside the
    latent cache for later runs on the same data and seed, and train without the reference forward
    (:mod:`diffalign.training.reference_pass`); the same losses. ``true``: the same, uncached runs too (their pass
    encodes every batch's images and prompts once more), and an error where it cannot apply;
    ``false``: the reference runs in every step."""
    output_dir: str = "outputs"
    seed: int = field(default=0, metadata=SEED)
    max_steps: int = field(default=1000, metadata=AT_LEAST_1)
    batch_size: int = field(default=1, metadata=AT_LEAST_1)
    gradient_accumulation_steps: int = field(default=1, metadata=AT_LEAST_1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    lean_layers: bool = True
    """Frozen convolutions (all of them under LoRA) keep only their weight for backward, not their
    input; frozen LayerNorms and GroupNorms keep their output, not their input; GEGLU
    feed-forwards remake ``gelu(gate)`` in backward (:mod:`diffalign.training.lean_layers`): the
    same gradients (the norms' to rounding), less activation memory, a little more backward work.
    ``False``: PyTorch's and diffusers' own layers."""
    compile: bool | Literal["regional", "auto"] = "auto"
    """``torch.compile`` the denoiser (the first steps are slow while it compiles): ``true`` the
    whole model, ``regional`` only its repeated blocks (diffusers' ``compile_repeated_blocks``:
    the transformer blocks), which compiles each distinct block once instead of the whole graph.
    ``auto``: ``regional`` where it pays for its compile within the run (a denoiser with repeated
    blocks, a compiler for the device, and ``max_steps × gradient_accumulation_steps`` at least
    :data:`~diffalign.training.setup.COMPILE_PAYS_AFTER`), else no compiling; the start-up says
    which and why (README, "Memory and speed switches", has the measurement)."""
    compile_memory_budget: float | None = field(default=None, metadata=bounds(0, 1, low_open=True))
    """With ``compile``: the fraction (0–1] of the activations the compiler may keep for backward;
    it recomputes the cheapest of the rest (PyTorch's memory-budget activation checkpointing).
    Recomputes less than ``gradient_checkpointing`` for a like saving. ``None``: keep them all."""
    allow_tf32: bool = True
    checkpoint_every: int = field(default=500, metadata=AT_LEAST_0)
    """Write a resumable checkpoint every this many optimiser steps (0: only when stopped by
    SIGTERM or SIGINT)."""
    keep_checkpoints: int = field(default=3, metadata=AT_LEAST_0)
    resume: str | None = None
    """``"latest"`` or a checkpoint folder: continue the run in ``output_dir`` from there. An
    output folder that already holds a run is refused without ``resume`` or ``overwrite``."""
    overwrite: bool = False
    """Delete what an earlier run wrote in ``output_dir`` (checkpoints, weights, logs, metrics,
    validation images) and train from the start."""
    max_nonfinite_steps: int = field(default=10, metadata=AT_LEAST_1)
    """Stop after this many optimiser steps in a row with a non-finite loss or gradient norm, or no
    readable data (each is skipped and counted)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    @staticmethod
    def config_migrate(data: dict, prefix: str, errors: list) -> dict:
        from diffalign.step_settings import move_step_keys  # the steps know their settings

        return move_step_keys(data)

    @staticmethod
    def config_complete(kwargs: dict, prefix: str, errors: list) -> None:
        from diffalign.step_settings import complete_step_blocks

        complete_step_blocks(kwargs, errors)


# ---------------------------------------------------------------------------------- loading
MAKE_FIRST = "# First:"
"""A shipped config whose model or data must be made first opens with ``# First: <command>``;
when a path it names is missing, the error repeats that command."""


def _known_family(value: str | None, key: str, errors: list) -> str | None:
    """``model.family`` must name a registered family (the registry, not a list kept here)."""
    if value is None:
        return None
    from diffalign.families import FAMILIES  # only when a family is named: the registry imports torch

    if value not in FAMILIES:
        errors.append((key, f"expected one of {', '.join(repr(name) for name in FAMILIES)}, got {value!r}"))
    return value


def _complete_objective(value, key: str, errors: list):
    from diffalign.objectives import complete_spec  # the objectives build their configs with this module's machinery

    return complete_spec(value, key, errors)


def load_config(path: str | Path, overrides: Sequence[str] = (), schema: type = TrainConfig):
    """Read a YAML file, apply dotted overrides, and build ``schema`` from it.

    Args:
        path: the YAML file.
        overrides: ``"a.b=value"`` strings, applied in order (the value is parsed as YAML).
        schema: the dataclass to build (``TrainConfig`` by default).

    Raises:
        ConfigError: listing every unknown key, wrong type, missing key and missing path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    sources: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        sources[key] = f"override {item!r}"
    try:
        return from_dict(schema, data, source=str(path), override_sources=sources)
    except ConfigError as err:
        first = text.splitlines()[0] if text else ""
        if MAKE_FIRST in first and "does not exist" in str(err):
            raise ConfigError(f"{err}\n  Make what it needs first: {first.split(MAKE_FIRST, 1)[1].strip()}") from None
        raise


def save_config(config, path: str | Path) -> None:
    """Write ``config`` as YAML that :func:`load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from err


def _set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
