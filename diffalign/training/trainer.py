"""The training loop: one loop for every objective and family, on ``accelerate``.

Per optimiser step: a batch of ``[B, K]`` groups → the objective's preference step
(:mod:`diffalign.steps`: latents and conditioning, noisy latents, the errors of the policy and,
for objectives that need it, of the reference) → the objective's loss → backward. See :func:`train`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from diffalign import stopping
from diffalign.config import TrainConfig, save_config, to_dict, torch_dtype
from diffalign.data.loader import GroupDataset, collate_groups, loader_workers
from diffalign.errors import DiffalignError
from diffalign.families.reference import Reference
from diffalign.steps import STEPS, RolloutStep, group_generators
from diffalign.training import checkpoint, run_folder
from diffalign.training.checks import preflight
from diffalign.training.lean_layers import lean_layers
from diffalign.training.lora import add_lora, save_lora
from diffalign.training.metrics import MetricLog
from diffalign.training.optim import make_optimizer, make_scheduler
from diffalign.training.validation import sample_grid


class TrainingError(DiffalignError, RuntimeError):
    """Training failed: too many skipped steps in a row, or every step skipped."""


class EpochSampler(Sampler):
    """A shuffled order that depends only on ``(seed, epoch)``, so a resumed run sees the same
    data order as an uninterrupted one (accelerate calls ``set_epoch`` through its wrapper)."""

    def __init__(self, length: int, seed: int, shuffle: bool = True):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    steps: int
    weights: Path
    skipped_steps: int
    skipped_groups: int
    is_main_process: bool = True


def _accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
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
    import os

    from accelerate.utils import DistributedType

    for env, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP), ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(env, "false").lower() == "true" and accelerator.distributed_type != kind:
            accelerator.print(f"warning: the launch asks for {kind.value} ({env}), which accelerate runs only on GPUs; "
                              f"this run on {accelerator.device.type} is plain data parallel ({accelerator.distributed_type.value})")


class Trainer:
    """Holds a run's state; :meth:`run` trains to ``max_steps``."""

    def __init__(self, config: TrainConfig):
        from accelerate.utils import set_seed

        self.config = config
        self.objective, self.data, self.family_name, self.cache_plan = preflight(config)
        self.out = Path(config.output_dir)
        self.accelerator = _accelerator(config)
        set_seed(config.seed)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self._prepare_cache()
        self._load_model()
        self._build_data()
        self.trainable = [p for p in self.family.denoiser.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.trainable, config.optim)
        self.scheduler = make_scheduler(self.optimizer, config.optim, config.max_steps, self.accelerator.num_processes)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            self.family.denoiser, self.optimizer, self.loader, self.scheduler
        )
        if config.lora is not None:  # checkpoints hold the adapters, not the frozen base
            checkpoint.save_only_trainable(self.accelerator, self.model)
        self.epoch = 0
        self.state = {"step": 0, "batches": 0, "skipped_steps": 0, "skipped_groups": 0, "nonfinite_in_a_row": 0}

    # ----------------------------------------------------------------------------- set-up
    def _prepare_cache(self) -> None:
        """``data.cache: auto`` on a dataset without this model's cache: build it now (split
        across the processes, resumable), with the encoders loaded only for that, then train
        from it. Later runs find it finished and reuse it."""
        plan, accelerator = self.cache_plan, self.accelerator
        if plan.action == "off" and self.config.data.cache == "auto":
            accelerator.print(f"latent cache: off ({plan.reason}); encoding images and prompts at every step")
        if plan.action == "use":
            accelerator.print(f"latent cache: reading {plan.folder}")
        if plan.action != "build":
            return
        import gc

        from diffalign.data.cache import build_cache
        from diffalign.families import load

        config = self.config
        accelerator.print(f"latent cache: building {plan.folder} ({plan.reason}); later runs reuse it")
        options = config.model.family_options()
        options.update(family=self.family_name, dtype=torch.float32)
        # The whole pipeline, for the build only: training loads it again without the encoders.
        family = load(config.model.path, device=accelerator.device, **options)
        # An unfinished cache (a killed build, or one `diffalign cache` began) continues in its layout.
        build_cache(config.data.path, family, resolution=config.data.resolution, progress=config.logging.progress_bar,
                    frames=config.data.frames, frame_stride=config.data.frame_stride)
        del family
        gc.collect()

    def _load_model(self) -> None:
        from diffalign.families import load

        config, lora = self.config, self.config.lora is not None
        weight_dtype = torch_dtype(self.accelerator.mixed_precision)
        cached = self.cache_plan.cached
        need_encoders = not cached or bool(config.validation.prompts)
        options = config.model.family_options()
        options["family"] = self.family_name
        # LoRA: frozen base weights in the training dtype; full fine-tuning keeps fp32 masters.
        options["dtype"] = weight_dtype if lora else torch.float32
        self.family = load(config.model.path, device=self.accelerator.device, load_vae=need_encoders,
                           load_text_encoders=need_encoders, **options)
        denoiser = self.family.denoiser
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
        self.reference = Reference(denoiser, lora, dtype=weight_dtype) if self.objective.needs_reference else None
        self.step = STEPS[self.objective.step](self.family, self.objective, self.reference, self.data.group_size)
        if config.lean_layers:
            lean_layers(denoiser)
        if config.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if config.compile == "regional":
            self.family.compile_repeated_blocks()
        elif config.compile:
            # In place (nn.Module.compile), so the reference, accelerate and saving keep seeing
            # the same module object; LoRA on/off for the reference is one more guarded graph.
            denoiser.compile()

    def _build_data(self) -> None:
        from diffalign.data.cache import LatentCache

        config = self.config
        clip = dict(frames=config.data.frames, frame_stride=config.data.frame_stride)
        cache = LatentCache.open(config.data.path, self.family, config.data.resolution, **clip) if self.cache_plan.cached else None
        self.groups = GroupDataset(
            self.data, resolution=config.data.resolution, center_crop=config.data.center_crop,
            random_flip=config.data.random_flip, strict=config.data.strict, seed=config.seed, cache=cache, **clip,
        )
        workers = loader_workers(config.data.workers)
        self.loader = DataLoader(
            self.groups, batch_size=config.batch_size, sampler=EpochSampler(len(self.groups), config.seed),
            # Not persistent_workers: workers copy the dataset when they start, and each epoch's
            # set_epoch (its crops and flips) must reach them.
            collate_fn=collate_groups, num_workers=workers, pin_memory=torch.cuda.is_available(),
            # SIGINT/SIGTERM reach the workers too; the main process decides where to stop.
            worker_init_fn=stopping.ignore_in_worker if workers else None,
        )

    # ----------------------------------------------------------------------------- one step
    def compute_loss(self, batch: dict):
        """Loss and metrics of one batch (``None`` when every group in it was unreadable)."""
        if not batch["ids"]:
            return None
        generators = group_generators(self.config.seed, self.epoch, batch["indices"])
        out = self.objective.loss(self.step(self.model, batch, generators))
        out.metrics.update(self.step.metrics())
        return out

    # ----------------------------------------------------------------------------- loop
    def run(self, on_step=None) -> TrainResult:
        """Train to ``max_steps`` (continuing from a checkpoint under ``resume``).

        Args:
            on_step: optional ``on_step(step, trainer)`` called after every optimiser step, e.g.
                to track a metric of samples during training (the toy benchmark does).
        """
        self._on_step = on_step
        # The main process holds the folder's lock for the whole run (see run_folder).
        lock = run_folder.lock(self.out) if self.accelerator.is_main_process else contextlib.nullcontext()
        with stopping.stop_requests(), lock:
            return self._run()

    def _run(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        ckpt_dir = self.out / "checkpoints"
        if config.overwrite and accelerator.is_main_process:
            run_folder.clear(self.out)
        accelerator.wait_for_everyone()
        resume_from = checkpoint.resolve_resume(config.resume, ckpt_dir, say=accelerator.print)
        if resume_from is not None:
            self.state, step_state = checkpoint.load(accelerator, resume_from)
            self.step.load_state_dict(step_state)
            accelerator.print(f"resumed from {resume_from} at step {self.state['step']}")
        log = MetricLog(accelerator, self.out / "metrics.jsonl")
        if accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.yaml")
            # Steps logged after the checkpoint by the run that stopped are logged again now.
            log.drop_after(self.state["step"])
        accelerator.init_trackers(config.logging.project, config=_flat(to_dict(config)))
        bar = tqdm(total=config.max_steps, initial=self.state["step"], desc="train", unit="step",
                   disable=not (accelerator.is_local_main_process and config.logging.progress_bar))
        with compiler_options(config):
            self._loop(log, bar, ckpt_dir)
        bar.close()
        if self.state["step"] and self.state["skipped_steps"] >= self.state["step"]:
            raise TrainingError(
                f"every one of the {self.state['step']} steps was skipped (a non-finite loss or gradient norm, or no "
                "readable data), so the weights never changed and none were saved; lower the learning rate or beta, "
                "or check the data"
            )
        weights = self._save_final()
        accelerator.end_training()
        return TrainResult(self.out, self.state["step"], weights, self.state["skipped_steps"],
                           self.state["skipped_groups"], accelerator.is_main_process)

    def _loop(self, log: MetricLog, bar, ckpt_dir: Path) -> None:
        """Optimiser steps until ``max_steps``, from wherever ``self.state`` stands."""
        config, accelerator = self.config, self.accelerator
        window_bad = self._stop = False
        while self.state["step"] < config.max_steps:
            self.epoch, skip = divmod(self.state["batches"], len(self.loader))
            self.loader.set_epoch(self.epoch)
            self.groups.set_epoch(self.epoch)
            batches = accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            for batch in batches:
                self.state["batches"] += 1
                self.state["skipped_groups"] += batch["skipped"]
                with accelerator.accumulate(self.model):
                    out = self.compute_loss(batch)
                    if self._agree(out):
                        window_bad = True
                    else:
                        accelerator.backward(out.loss)
                        log.add(out.metrics)
                    if accelerator.sync_gradients:
                        self._optimizer_step(window_bad)
                if accelerator.sync_gradients:
                    window_bad = False
                    self._after_step(log, bar, ckpt_dir)
                    if self.state["step"] >= config.max_steps:
                        break
                    if self._stop:
                        self._stop_here(log, ckpt_dir)

    def _agree(self, out) -> bool:
        """True on every process when any process has an empty batch or a non-finite loss, so
        that all of them skip together (a lone skip would hang distributed backward). The same
        all-reduce agrees on a stop request (SIGTERM/SIGINT on any process), so every process
        stops after the same optimiser step."""
        bad = 1.0 if out is None else float(not torch.isfinite(out.loss).all())
        flags = torch.tensor([bad, float(stopping.requested() is not None)], device=self.accelerator.device)
        bad, stop = self.accelerator.reduce(flags, reduction="sum").tolist()
        self._stop = stop > 0
        return bad > 0

    def _optimizer_step(self, bad: bool) -> None:
        if bad or not self._clip_gradients():
            self.optimizer.zero_grad(set_to_none=True)
            self.state["skipped_steps"] += 1
            self.state["nonfinite_in_a_row"] += 1
            if self.state["nonfinite_in_a_row"] >= self.config.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.state['nonfinite_in_a_row']} steps in a row had a non-finite loss or gradient norm, or no "
                    "readable data; lower the learning rate or beta, or check the data"
                )
            return
        self.state["nonfinite_in_a_row"] = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _clip_gradients(self) -> bool:
        """Clip to ``max_grad_norm`` (with 0, measure only: an infinite bound clips nothing) and say
        whether the gradient norm is finite; a step whose norm is not finite must not be taken.
        The norm is the same on every process (gradients are all-reduced, or FSDP reduces the
        norm), so all of them skip together. Under DeepSpeed, which steps inside ``backward``,
        accelerate returns no norm and DeepSpeed's own overflow checks apply."""
        max_norm = self.config.optim.max_grad_norm
        norm = self.accelerator.clip_grad_norm_(self._clipped_parameters(), max_norm if max_norm > 0 else math.inf)
        if norm is None:
            return True
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2 returns a DTensor
        return bool(torch.isfinite(norm))

    def _clipped_parameters(self):
        """The trainable parameters (a LoRA run's few hundred, not the model's thousands: the
        profile showed clipping over all of them at ~5 % of a step). FSDP recognises its own
        model only by the full parameter list, so it gets that."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            return self.model.parameters()
        return self.trainable

    def _after_step(self, log: MetricLog, bar, ckpt_dir: Path) -> None:
        config, step = self.config, self.state["step"] + 1
        self.state["step"] = step
        bar.update(1)
        self.step.on_update(step)
        timing = self._rollout_timing()
        if step % config.logging.every == 0 or step == config.max_steps:
            logged = log.flush(step, {**self._counters(), **timing})
            if "train/loss" in logged:
                bar.set_postfix(loss=f"{logged['train/loss']:.4g}", **{k.split("/")[1]: f"{v:.2f}"
                                                                        for k, v in timing.items()})
        if self._checkpoint_due(step):
            self._save_checkpoint(ckpt_dir)
        every = config.validation.every
        if every and step % every == 0 and self.accelerator.is_main_process:
            if config.validation.prompts:
                self._validate(step)
            self._save_rollouts(step)
        if self._on_step is not None:
            self._on_step(step, self)

    def _rollout_timing(self) -> dict:
        """A sampling step's seconds in this optimiser step, rolling out and training
        (``time/rollout_s``, ``time/train_s``); ``{}`` for the other steps."""
        if not isinstance(self.step, RolloutStep):
            return {}
        seconds = self.step.pop_timing()
        return {"time/rollout_s": seconds["rollout"], "time/train_s": seconds["train"]}

    def _save_rollouts(self, step: int) -> None:
        """The last rollout's images as a grid, ``validation/rollouts-step-N.png``."""
        if not isinstance(self.step, RolloutStep):
            return
        images = self.step.rollout_images()
        if images is None:
            return
        from torchvision.utils import save_image

        path = self.out / "validation" / f"rollouts-step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, str(path), nrow=math.ceil(math.sqrt(len(images))))

    def _counters(self) -> dict:
        return {"lr": self.scheduler.get_last_lr()[0], "skipped_steps": self.state["skipped_steps"],
                "skipped_groups": self.state["skipped_groups"]}

    def _save_checkpoint(self, ckpt_dir: Path) -> Path:
        return checkpoint.save(self.accelerator, ckpt_dir, self.state["step"], dict(self.state),
                               self.config.keep_checkpoints, step_state=self.step.state_dict(),
                               shared=self.step.shared_state)

    def _checkpoint_due(self, step: int) -> bool:
        return bool(self.config.checkpoint_every) and step % self.config.checkpoint_every == 0

    def _stop_here(self, log: MetricLog, ckpt_dir: Path) -> None:
        """After SIGTERM/SIGINT: log the steps since the last log line, write the step's checkpoint
        (unless it was just written) and raise :class:`~diffalign.errors.Stopped`."""
        step = self.state["step"]
        if log.count:
            log.flush(step, self._counters())
        path = checkpoint.path_for(ckpt_dir, step)
        if not self._checkpoint_due(step):
            path = self._save_checkpoint(ckpt_dir)
        self.accelerator.end_training()
        raise stopping.stopped(f"step {step} of {self.config.max_steps} is saved in {path}; run the same command "
                               "with resume=latest to continue from there")

    def _validate(self, step: int) -> None:
        resolution = self.config.validation.resolution or self.config.data.resolution
        sample_grid(self.family, self.config.validation, resolution, self.out / "validation" / f"step-{step:07d}.png",
                    frames=self.config.data.frames)

    def _save_final(self) -> Path:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        denoiser = accelerator.unwrap_model(self.model)
        if self.config.lora is not None:
            target = self.out / "lora"
            if accelerator.is_main_process:
                save_lora(self.family, denoiser, target, self.config.lora)
        else:
            target = self.out / "final" / self.family.denoiser_name
            if accelerator.is_main_process:
                denoiser.save_pretrained(str(target), safe_serialization=True)
        if self.config.validation.prompts and accelerator.is_main_process:
            self._validate(self.state["step"])
        accelerator.wait_for_everyone()
        return target


def compiler_options(config: TrainConfig):
    """The compiler settings of a run, as a context for the steps (the model compiles lazily, at
    its first calls): ``compile_memory_budget`` sets AOT autograd's activation memory budget
    only while this run's steps trace, not for the rest of the process."""
    if not config.compile or config.compile_memory_budget is None:
        return contextlib.nullcontext()
    import torch._functorch.config as functorch_config

    return functorch_config.patch(activation_memory_budget=config.compile_memory_budget)


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested config → ``{"optim.lr": 1e-5, ...}`` with tracker-friendly values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def train(config: TrainConfig) -> TrainResult:
    """Train with ``config`` (see :class:`~diffalign.config.TrainConfig`)."""
    return Trainer(config).run()
