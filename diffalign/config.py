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

from diffalign.errors import DiffalignError

# Field metadata: how a path-valued key is checked.
MUST_EXIST = {"path": "must_exist"}
"""The value is a local file or folder that must exist."""
LOCAL_OR_HUB = {"path": "local_or_hub"}
"""The value is a hub id or a local path; it must exist when it is written as a path
(starting with ``/``, ``./``, ``../`` or ``~``)."""


def bounds(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> dict:
    """Field metadata: the value (each item of a list or tuple; ``None`` is not checked) must lie
    in ``[low, high]``, open at an end with ``low_open`` / ``high_open``. Checked when the config
    loads, so ``diffalign check-config`` and ``diffalign train`` refuse the same values, before
    anything loads."""
    return {"bounds": (low, high, low_open, high_open)}


AT_LEAST_0 = bounds(0)
AT_LEAST_1 = bounds(1)
POSITIVE = bounds(0, low_open=True)


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


class ConfigError(DiffalignError, ValueError):
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
    logit_std: float = field(default=1.0, metadata=POSITIVE)
    mode_scale: float = 1.29
    loss_weighting: Literal["none", "min_snr", "sigma_sqrt", "cosmap"] = "none"
    snr_gamma: float = field(default=5.0, metadata=POSITIVE)
    use_t5: bool = True
    """SD3 only: ``False`` leaves the T5 encoder out."""
    max_sequence_length: int = field(default=256, metadata=AT_LEAST_1)
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
    resolution: int = field(default=512, metadata=AT_LEAST_1)
    center_crop: bool = True
    random_flip: bool = False
    strict: bool = False
    """``True``: an unreadable image is an error instead of being skipped and counted."""
    cache: bool = False
    """Serve latents and prompt embeddings from the latent cache (``diffalign cache``); training
    then loads neither the VAE nor the text encoders."""
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
    AUTOMATIC1111 load; UNet families only)."""


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
    resolution: int | None = field(default=None, metadata=AT_LEAST_1)
    """Defaults to ``data.resolution``."""
    seed: int = 0


def complete_objective(spec: dict, key: str = "objective", errors: list | None = None) -> dict:
    """``{"name": ..., **params}`` checked against that objective's config class and returned with
    every default filled in; problems go to ``errors`` as ``(key, message)`` (raised as one
    :class:`ConfigError` when ``errors`` is not given)."""
    from diffalign.objectives import OBJECTIVES, describe_config

    own = [] if errors is None else errors
    params = dict(spec)
    name = params.pop("name", None)
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(str(name), OBJECTIVES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        own.append((f"{key}.name", f"{'missing' if name is None else f'unknown objective {name!r}'}{hint}; "
                                   f"known objectives: {', '.join(OBJECTIVES)}"))
        return _raise_or(spec, own, errors)
    config_cls, first = OBJECTIVES[name].Config, len(own)
    try:
        config = _build(config_cls, params, key, own)
    except (TypeError, ValueError) as err:  # the objective config's own checks (__post_init__)
        own.append((key, f"{name}: {err}"))
        config = None
    if config is None:
        accepted = f"{name} accepts: {describe_config(config_cls)}"
        own[first:] = [(k, f"{msg}; {accepted}") for k, msg in own[first:]]
        return _raise_or(spec, own, errors)
    return {"name": name, **to_dict(config)}


def _raise_or(value, own: list, errors: list | None):
    if errors is None:
        raise ConfigError("\n".join(f"  - {k}: {m}" for k, m in own))
    return value


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    model: ModelConfig
    data: DataConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "diffusion_dpo"},
                                      metadata={"complete": lambda value, key, errors: complete_objective(value, key, errors)})
    """``name`` plus that objective's own keys, checked against its config class when the config
    loads and filled in with its defaults (so a saved ``config.yaml`` shows every value used)."""
    output_dir: str = "outputs"
    seed: int = 0
    max_steps: int = field(default=1000, metadata=AT_LEAST_1)
    batch_size: int = field(default=1, metadata=AT_LEAST_1)
    gradient_accumulation_steps: int = field(default=1, metadata=AT_LEAST_1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    lean_layers: bool = True
    """Frozen convolutions (all of them under LoRA) keep only their weight for backward, not their
    input, and GEGLU feed-forwards remake ``gelu(gate)`` in backward
    (:mod:`diffalign.training.lean_layers`): the same gradients, less activation memory.
    ``False``: PyTorch's and diffusers' own layers."""
    compile: bool = False
    """``torch.compile`` the denoiser (the first steps are slow while it compiles)."""
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


# ---------------------------------------------------------------------------------- loading
MAKE_FIRST = "# First:"
"""A shipped config whose model or data must be made first opens with ``# First: <command>``;
when a path it names is missing, the error repeats that command."""


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
        before = len(errors)
        kwargs[name] = _coerce(_over_default(f, data[name]), hints[name], key, errors)
        if f.metadata.get("path") and isinstance(kwargs[name], str):
            _check_path(kwargs[name], f.metadata["path"], key, errors)
        if f.metadata.get("bounds") and len(errors) == before:
            _check_bounds(kwargs[name], f.metadata["bounds"], key, errors)
        if f.metadata.get("complete") and len(errors) == before:
            kwargs[name] = f.metadata["complete"](kwargs[name], key, errors)
    return None if len(errors) > first_error else schema(**kwargs)


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a field whose default is a dataclass instance sets keys *of that
    default*: ``inversion: {steps: 3}`` keeps the objective's own other inversion defaults."""
    if f.default_factory is dataclasses.MISSING or not isinstance(value, dict):
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    return _merged(dataclasses.asdict(default), value)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


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


def _check_bounds(value: Any, rule: tuple, key: str, errors: list) -> None:
    low, high, low_open, high_open = rule
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        below = low is not None and (item <= low if low_open else item < low)
        above = high is not None and (item >= high if high_open else item > high)
        if below or above:
            if high is None:
                wanted = f"{'>' if low_open else '≥'} {low:g}"
            else:
                wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            errors.append((key, f"expected a value {wanted}, got {item!r}"))
            return


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
