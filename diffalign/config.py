"""Typed configs: dataclasses loaded from YAML, with dotted command-line overrides.

The dataclasses are the single source of truth for every key, its type and its default.
:func:`load_config` checks a YAML file against them *before* any model loads and reports every
problem at once, naming the key and where its value came from (the file or an override)::

    cfg = load_config("training/configs/sdxl/diffusion_dpo.yaml", ["optim.lr=1e-5", "lora.rank=16"])

Override values are parsed as YAML (``lora=null``, ``lora.target_modules=[to_q,to_v]``). Floats
may be written ``1e-5``, which YAML 1.1 would otherwise read as a string.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

# Field metadata: how a path-valued key is checked.
MUST_EXIST = {"path": "must_exist"}
"""The value is a local file or folder that must exist."""
LOCAL_OR_HUB = {"path": "local_or_hub"}
"""The value is a hub id or a local path; it must exist when it is written as a path
(starting with ``/``, ``./``, ``../`` or ``~``)."""


DTYPE_NAMES = ("fp32", "fp16", "bf16")
"""The dtype names configs and commands accept."""


def torch_dtype(name: str):
    """``"fp32"`` (or accelerate's ``"no"``), ``"fp16"``, ``"bf16"`` → the torch dtype."""
    import torch

    return {"fp32": torch.float32, "no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class ConfigError(ValueError):
    """One or more problems in a config, each naming the key and its source."""


@dataclass
class ModelConfig:
    """The base model and the family maths options (see :mod:`diffalign.families`)."""

    path: str = field(metadata=LOCAL_OR_HUB)
    """Diffusers pipeline folder or hub id."""
    family: Literal["sd", "sdxl", "sd3"] | None = None
    """``None`` detects it from ``model_index.json``."""
    revision: str | None = None
    variant: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype the weights load in (mixed precision is the trainer's ``mixed_precision``)."""
    attention: Literal["sdpa", "xformers"] = "sdpa"
    time_sampling: Literal["uniform", "logit_normal", "mode"] | None = None
    """``None``: uniform for UNets, logit-normal for SD3."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    loss_weighting: Literal["none", "min_snr", "sigma_sqrt", "cosmap"] = "none"
    snr_gamma: float = 5.0
    use_t5: bool = True
    """SD3 only: ``False`` leaves the T5 encoder out."""
    max_sequence_length: int = 256
    """SD3 only: T5 tokens."""

    def family_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`diffalign.families.load`, which drops the
        family-specific ones left at their defaults for families they do not apply to."""
        return dict(
            family=self.family, revision=self.revision, variant=self.variant,
            dtype=torch_dtype(self.dtype),
            attention=self.attention, time_sampling=self.time_sampling, logit_mean=self.logit_mean,
            logit_std=self.logit_std, mode_scale=self.mode_scale, loss_weighting=self.loss_weighting,
            snr_gamma=self.snr_gamma, use_t5=self.use_t5, max_sequence_length=self.max_sequence_length,
        )


@dataclass
class DataConfig:
    """Where the preference data is and how images are prepared."""

    path: str = field(metadata=MUST_EXIST)
    """Folder of the on-disk preference dataset (``manifest.json`` + Parquet shards)."""
    resolution: int = 512
    center_crop: bool = True
    random_flip: bool = False
    strict: bool = False
    """``True``: an unreadable image is an error instead of being skipped and counted."""
    cache: bool = False
    """Serve latents and prompt embeddings from the latent cache (``diffalign cache``); training
    then loads neither the VAE nor the text encoders."""
    workers: int | None = None
    """DataLoader worker processes. ``None``: 4 (at most the CPU count) when a GPU trains, so image
    decoding overlaps its step; 0 on CPU, where the model already uses every core."""


@dataclass
class LoRAConfig:
    """LoRA adapters through ``peft``; ``lora: null`` in the YAML means full fine-tuning."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (diffusers' ``get_scheduler`` names)."""

    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"
    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclass
class LoggingConfig:
    """Where metrics go: ``metrics.jsonl`` in the output folder always, plus a tracker."""

    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    every: int = 10
    """Log (and sync metrics across processes) every this many optimiser steps."""
    project: str = "diffalign"
    progress_bar: bool = True


@dataclass
class ValidationConfig:
    """Images sampled for fixed prompts during training, saved as a grid PNG."""

    prompts: list[str] = field(default_factory=list)
    every: int = 0
    """Every this many steps (0: only at the end, when prompts are given)."""
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    resolution: int | None = None
    """Defaults to ``data.resolution``."""
    seed: int = 0


@dataclass
class TrainConfig:
    """Everything one training run needs. ``objective`` holds ``name`` plus that objective's own
    keys; they are checked against the objective's config class when the trainer builds it."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "diffusion_dpo"})
    output_dir: str = "outputs"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    lean_layers: bool = True
    """Frozen convolutions (all of them under LoRA) keep only their weight for backward, not their
    input, and GEGLU feed-forwards remake ``gelu(gate)`` in backward
    (:mod:`diffalign.training.lean_layers`): the same gradients, less activation memory.
    ``False``: PyTorch's and diffusers' own layers."""
    compile: bool = False
    """``torch.compile`` the denoiser (the first steps are slow while it compiles)."""
    compile_memory_budget: float | None = None
    """With ``compile``: the fraction (0–1] of the activations the compiler may keep for backward;
    it recomputes the cheapest of the rest (PyTorch's memory-budget activation checkpointing).
    Recomputes less than ``gradient_checkpointing`` for a like saving. ``None``: keep them all."""
    allow_tf32: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None
    """``"latest"`` or a checkpoint folder."""
    max_nonfinite_steps: int = 10
    """Stop after this many optimiser steps in a row with a non-finite loss (each is skipped)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


# ---------------------------------------------------------------------------------- loading
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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    sources: dict[str, str] = {}
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        sources[key] = f"override {item!r}"
    return from_dict(schema, data, source=str(path), override_sources=sources)


def from_dict(schema: type, data: Any, source: str = "<dict>", override_sources: dict[str, str] | None = None):
    """Build the dataclass ``schema`` from plain data, or raise one :class:`ConfigError`."""
    errors: list[tuple[str, str]] = []
    value = _build(schema, data, "", errors)
    if errors:
        sources = override_sources or {}

        def where(key: str) -> str:
            hits = [s for k, s in sources.items() if key == k or key.startswith(k + ".")]
            return hits[-1] if hits else source

        lines = "\n".join(f"  - {key or '<top level>'}: {msg} (from {where(key)})" for key, msg in errors)
        raise ConfigError(f"invalid config {source}:\n{lines}")
    return value


def to_dict(config) -> dict[str, Any]:
    """Plain data for a config (YAML-serialisable; tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def save_config(config, path: str | Path) -> None:
    """Write ``config`` as YAML that :func:`load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def lookup(table: dict, name: str, kind: str):
    """``table[name]``, or a :class:`ConfigError` suggesting the closest name and listing them all
    (the one behaviour of every name → class table: objectives, reward models, ...)."""
    if name not in table:
        close = difflib.get_close_matches(str(name), table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(table)}")
    return table[name]


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


def _build(schema: type, data: Any, prefix: str, errors: list) -> Any:
    if not isinstance(data, dict):
        errors.append((prefix, f"expected a mapping of {schema.__name__} keys, got {_describe(data)}"))
        return None
    first_error = len(errors)
    hints = typing.get_type_hints(schema)
    known = {f.name: f for f in dataclasses.fields(schema)}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {_join(prefix, close[0])!r}?)" if close else f"; known keys: {', '.join(known)}"
            errors.append((_join(prefix, key), f"unknown key{hint}"))
    kwargs = {}
    for name, f in known.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append((key, "missing required key"))
            continue
        kwargs[name] = _coerce(data[name], hints[name], key, errors)
        if f.metadata.get("path") and isinstance(kwargs[name], str):
            _check_path(kwargs[name], f.metadata["path"], key, errors)
    return None if len(errors) > first_error else schema(**kwargs)


def _coerce(value: Any, hint: Any, key: str, errors: list) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], key, errors)
        trial: list = []
        for option in options:
            out = _coerce(value, option, key, trial)
            if not trial:
                return out
            trial.clear()
        errors.append((key, f"expected {_type_name(hint)}, got {_describe(value)}"))
        return None
    if origin is Literal:
        if value not in args:
            errors.append((key, f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}"))
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, errors)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append((key, f"expected {_type_name(hint)}, got {_describe(value)}"))
            return None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                errors.append((key, f"expected {len(args)} items, got {len(value)}"))
                return None
            return tuple(_coerce(v, a, f"{key}[{i}]", errors) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", errors) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            errors.append((key, f"expected a mapping, got {_describe(value)}"))
            return None
        return dict(value)
    return _coerce_scalar(value, hint, key, errors)


def _coerce_scalar(value: Any, hint: type, key: str, errors: list) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint)
    if ok is None:
        raise TypeError(f"config field {key} has an unsupported type {hint!r}")
    if ok:
        return float(value) if hint is float else value
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    errors.append((key, f"expected {_type_name(hint)}, got {_describe(value)}"))
    return None


def _check_path(value: str, rule: str, key: str, errors: list) -> None:
    looks_local = value.startswith(("/", "./", "../", "~"))
    if rule == "must_exist" or looks_local:
        if not Path(value).expanduser().exists():
            where = "" if Path(value).is_absolute() else f" (relative to the working directory {Path.cwd()})"
            errors.append((key, f"path {value!r} does not exist{where}"))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            hint.__name__, hint.__name__
        )
    return str(hint).replace("typing.", "")
