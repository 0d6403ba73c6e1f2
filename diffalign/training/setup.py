"""What a training run sets up before its first update: the accelerator, the latent cache when
``data.cache: auto`` has to build it, the model (LoRA or full, the reference, compilation) and
the compiler options its updates trace under. :class:`~diffalign.training.trainer.Trainer`
calls these in order."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from diffalign.config import TrainConfig, torch_dtype
from diffalign.families.reference import Reference
from diffalign.resources import collect_if_kept
from diffalign.steps import STEPS
from diffalign.step_settings import prompt_dropout
from diffalign.training.lean_layers import lean_layers
from diffalign.training.lora import add_lora


def make_accelerator(config: TrainConfig):
    """The run's ``Accelerator``. Micro-batches are the update loop's
    (:mod:`diffalign.training.update`), so accelerate accumulates nothing itself, except under
    DeepSpeed, whose engine must be told how many micro-batches make an update."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    on_gpu = torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps if deepspeed and on_gpu else 1,
        # fp32 on CPU: autocast there is slow and not what a GPU run would do anyway.
        mixed_precision=config.mixed_precision if on_gpu else "no",
        log_with=None if config.logging.report_to == "none" else config.logging.report_to,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=f"{config.output_dir}/logs"),
        cpu=not on_gpu,
    )
    _warn_unsharded(accelerator)
    return accelerator


def _warn_unsharded(accelerator) -> None:
    """accelerate turns FSDP and DeepSpeed on only for GPUs (and other accelerators): launched with
    ``training/accelerate/fsdp.yaml`` or ``deepspeed_zero2.yaml`` on CPUs, a run is plain data
    parallel. Say so rather than let a memory plan rest on sharding that is not there."""
    from accelerate.utils import DistributedType

    for env, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP), ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(env, "false").lower() == "true" and accelerator.distributed_type != kind:
            accelerator.print(f"warning: the launch asks for {kind.value} ({env}), which accelerate runs only on GPUs; "
                              f"this run on {accelerator.device.type} is plain data parallel ({accelerator.distributed_type.value})")


def prepare_cache(config: TrainConfig, plan, family_name: str, accelerator) -> None:
    """``data.cache: auto`` on a dataset without this model's cache: build it now (split across
    the processes, resumable), with the encoders loaded only for that, then train from it. Later
    runs find it finished and reuse it."""
    if plan.action == "off" and config.data.cache == "auto":
        accelerator.print(f"latent cache: off ({plan.reason}); encoding images and prompts at every step")
    if plan.action == "use":
        accelerator.print(f"latent cache: reading {plan.folder}")
    if plan.action != "build":
        return
    import weakref

    from diffalign.data.cache import build_cache
    from diffalign.families import load

    accelerator.print(f"latent cache: building {plan.folder} ({plan.reason}); later runs reuse it")
    options = config.model.family_options()
    options.update(family=family_name, dtype=torch.float32)
    # The whole pipeline, for the build only: training loads it again without the encoders.
    family = load(config.model.path, device=accelerator.device, **options)
    # An unfinished cache (a killed build, or one `diffalign cache` began) continues in its layout.
    build_cache(config.data.path, family, resolution=config.data.resolution, progress=config.logging.progress_bar,
                frames=config.data.frames, frame_stride=config.data.frame_stride)
    gone = weakref.ref(family)
    del family
    collect_if_kept(gone)


def load_model(config: TrainConfig, start, accelerator):
    """The family with its denoiser ready to train (LoRA adapters or every weight), the reference
    when the objective needs one, and the objective's preference step with its settings
    (``start``: the :class:`~diffalign.training.checks.Startup` of the run).

    Returns:
        ``(family, reference, step)``.
    """
    from diffalign.families import load

    lora, objective = config.lora is not None, start.objective
    weight_dtype = torch_dtype(accelerator.mixed_precision)
    need_encoders = not start.cache.cached or bool(config.validation.prompts)
    dropout = prompt_dropout(config, objective)
    options = config.model.family_options()
    options["family"] = start.family
    # LoRA: frozen base weights in the training dtype; full fine-tuning keeps fp32 masters.
    options["dtype"] = weight_dtype if lora else torch.float32
    family = load(config.model.path, device=accelerator.device, load_vae=need_encoders,
                  load_text_encoders=need_encoders or dropout > 0, **options)
    empty_prompt = _empty_prompt(family, keep_encoders=need_encoders) if start.cache.cached and dropout > 0 else None
    denoiser = family.denoiser
    if lora:
        from accelerate.utils import set_seed

        # LoRA's random A matrices must not depend on what loaded before them: building the
        # cache, or the encoders a cached run leaves out, may draw from the global generator
        # (the Wan VAE's and UMT5's initialisers do), so cached and uncached runs start alike.
        set_seed(config.seed)
        add_lora(denoiser, config.lora)
        if weight_dtype != torch.float32:
            from diffusers.training_utils import cast_training_params

            cast_training_params(denoiser, dtype=torch.float32)
    else:
        denoiser.requires_grad_(True)
    denoiser.train()
    reference = Reference(denoiser, lora, dtype=weight_dtype) if objective.needs_reference else None
    step = STEPS[objective.step](family, objective, reference, start.data.group_size, start.settings,
                                 prompt_dropout=dropout, empty_prompt=empty_prompt)
    if config.lean_layers:
        lean_layers(denoiser)
    if config.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    mode, why = compile_mode(config, family, accelerator.device)
    if config.compile == "auto":
        accelerator.print(f"compile: {'regional' if mode else 'off'} ({why})")
    if mode:
        keep_compile_cache()
    if mode == "regional":
        family.compile_repeated_blocks()
    elif mode:
        # In place (nn.Module.compile), so the reference, accelerate and saving keep seeing
        # the same module object; LoRA on/off for the reference is one more guarded graph.
        denoiser.compile()
    return family, reference, step


COMPILE_PAYS_AFTER = 5000
"""``compile: auto`` compiles a run of at least this many micro-batches (optimiser steps ×
gradient accumulation). A first compile pays after ``N = C / (t · (1 − 1/s))`` micro-batches (``C``
its seconds, ``t`` the eager step, ``s`` the speed-up). Measured on the mini SDXL, 2 CPU cores
(2026-12-07): ``C`` = 45 s from a cold inductor cache (7.5 s warm), ``t`` = 1.08 s, ``s`` = 1.37:
N ≈ 154 cold, 26 warm. At SDXL 1024 px on a GPU, arithmetic until ``benchmarks/gpu_table.py``
measures it: ``t`` 0.3–0.5 s, ``s`` 1.1–1.3, ``C`` 60–120 s give N ≈ 260–4,400; 5,000 covers
the pessimistic end, and Diffusion-DPO's SDXL recipe runs hundreds of thousands."""


def compile_mode(config: TrainConfig, family, device) -> tuple[bool | str, str]:
    """What ``config.compile`` means for this run: ``False``, ``"regional"`` or ``True``, and why
    (``auto`` only: :data:`COMPILE_PAYS_AFTER`, the denoiser's repeated blocks, the device's compiler)."""
    if config.compile != "auto":
        return config.compile, f"compile: {config.compile}"
    forwards = config.max_steps * config.gradient_accumulation_steps  # the compile saves on every micro-batch
    if forwards < COMPILE_PAYS_AFTER:
        return False, (f"the run's {forwards} micro-batches (max_steps × gradient_accumulation_steps) are fewer than the "
                       f"{COMPILE_PAYS_AFTER} a first compile needs to pay for itself; compile: regional compiles anyway")
    if not family.repeated_block_modules():
        return False, f"the {family.name} denoiser names no repeated blocks"
    if (missing := _missing_compiler(device)) is not None:
        return False, missing
    return "regional", f"the run's {forwards} micro-batches pay for the first compile ({COMPILE_PAYS_AFTER} do)"


def _missing_compiler(device) -> str | None:
    """Why inductor cannot compile for ``device`` here (``None``: it can): Triton on CUDA, a C++
    compiler on the CPU."""
    import importlib.util
    import shutil

    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed (inductor's CUDA backend)"
    if device.type == "cpu":
        compiler = os.environ.get("CXX", "c++")
        return None if shutil.which(compiler) else f"no C++ compiler ({compiler}) for inductor's CPU backend"
    return f"inductor is not set up for {device.type} here"


def keep_compile_cache() -> None:
    """Keep inductor's compiled kernels between runs: unless ``TORCHINDUCTOR_CACHE_DIR`` is set,
    under ``$XDG_CACHE_HOME/diffalign/inductor`` (``~/.cache``) instead of inductor's ``/tmp``
    folder, which cluster jobs and reboots clear; a later run then compiles from a warm cache."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "diffalign" / "inductor")


def _empty_prompt(family, keep_encoders: bool):
    """The empty prompt's conditioning ``[1, 1, ...]`` for a cached run's prompt dropout; the text
    encoders, loaded for it alone, are let go afterwards."""
    import weakref

    with torch.no_grad():
        empty = family.encode_prompts([""], group_size=1)
    if not keep_encoders:
        gone = [weakref.ref(getattr(family.pipe, name)) for name in family.text_components
                if getattr(family.pipe, name, None) is not None]
        for name in family.text_components:
            setattr(family.pipe, name, None)
        collect_if_kept(*gone)
    return empty


def compiler_options(config: TrainConfig):
    """The compiler settings of a run, as a context for the steps (the model compiles lazily, at
    its first calls): ``compile_memory_budget`` sets AOT autograd's activation memory budget
    only while this run's steps trace, not for the rest of the process."""
    if not config.compile or config.compile_memory_budget is None:
        return contextlib.nullcontext()
    import torch._functorch.config as functorch_config

    return functorch_config.patch(activation_memory_budget=config.compile_memory_budget)


def flat_config(tree: dict, prefix: str = "") -> dict:
    """Nested config → ``{"optim.lr": 1e-5, ...}`` with tracker-friendly values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
