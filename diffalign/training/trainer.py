"""The preference trainer: one loop for every objective and family, on ``accelerate``.

Per update: ``gradient_accumulation_steps`` batches of ``[B, K]`` groups (the step may group
them otherwise: :meth:`~diffalign.steps.base.PreferenceStep.updates`) → for each, the
objective's preference step (:mod:`diffalign.steps`: latents and conditioning, noisy latents,
the errors of the policy and, for objectives that need it, of the reference) → the objective's
loss → the update loop (:mod:`diffalign.training.update`: backward, the optimiser step,
checkpoints, stop and resume). See :func:`train` and ``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign import stopping
from diffalign.config import TrainConfig, save_config, to_dict
from diffalign.data.loader import GroupDataset, group_loader
from diffalign.steps import group_generators
from diffalign.training import run_folder
from diffalign.training.checks import preflight
from diffalign.training.lora import save_lora
from diffalign.training.metrics import MetricLog
from diffalign.training.optim import make_optimizer, make_scheduler
from diffalign.training.setup import (
    compiler_options,
    flat_config,
    load_model,
    make_accelerator,
    prepare_cache,
)
from diffalign.training.update import TrainingError, UpdateLoop, UpdateSettings
from diffalign.training.validation import sample_grid


@dataclass
class TrainResult:
    """What a finished run produced (``steps``: the updates taken)."""

    output_dir: Path
    steps: int
    weights: Path
    skipped_steps: int
    skipped_groups: int
    is_main_process: bool = True


class Trainer:
    """Holds a run's state; :meth:`run` trains to ``max_steps`` updates."""

    def __init__(self, config: TrainConfig):
        from accelerate.utils import set_seed

        self.config = config
        start = preflight(config)
        self.objective, self.data, self.family_name, self.cache_plan = start.objective, start.data, start.family, start.cache
        self.out = Path(config.output_dir)
        self.accelerator = make_accelerator(config)
        set_seed(config.seed)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        prepare_cache(config, self.cache_plan, self.family_name, self.accelerator)
        self.family, self.reference, self.step = load_model(config, start, self.accelerator)
        self.groups = self._groups()
        loader = group_loader(self.groups, config.batch_size, config.seed, config.data.workers,
                              # SIGINT/SIGTERM reach the workers too; the main process decides where to stop.
                              worker_init_fn=stopping.ignore_in_worker)
        self.trainable = [p for p in self.family.denoiser.parameters() if p.requires_grad]
        optimizer = make_optimizer(self.trainable, config.optim)
        scheduler = make_scheduler(optimizer, config.optim, config.max_steps, self.accelerator.num_processes)
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            self.family.denoiser, optimizer, loader, scheduler
        )
        if config.lora is not None:  # checkpoints hold the adapters, not the frozen base
            from diffalign.training import checkpoint

            checkpoint.save_only_trainable(self.accelerator, self.model)
        from diffalign.training import reference_pass

        self.step.reference_table = reference_pass.prepare(self)
        if self.step.reference_table is not None and self.reference is not None:
            self.reference.release()  # full fine-tuning: the frozen copy is not needed while training
        settings = UpdateSettings(config.max_steps, config.optim.max_grad_norm, config.max_nonfinite_steps,
                                  config.checkpoint_every, config.keep_checkpoints)
        self.loop = UpdateLoop(self.accelerator, self.model, self.optimizer, self.scheduler, self.out / "checkpoints",
                               settings, self._clipped_parameters, carried=self.step)
        self.epoch = 0
        self._since_log: dict[str, float] = {}

    @property
    def state(self) -> dict:
        """The loop's counters (``step``: updates taken; ``batches``: batches drawn; skips)."""
        return self.loop.state

    def _groups(self) -> GroupDataset:
        from diffalign.data.cache import LatentCache

        config = self.config
        clip = dict(frames=config.data.frames, frame_stride=config.data.frame_stride)
        cache = self.cache_plan.cache  # opened and checked by preflight; a cache built just now is opened here
        if cache is None and self.cache_plan.cached:
            cache = LatentCache.open(config.data.path, self.family, config.data.resolution, **clip)
        return GroupDataset(self.data, resolution=config.data.resolution, center_crop=config.data.center_crop,
                            random_flip=config.data.random_flip, strict=config.data.strict, seed=config.seed,
                            cache=cache, **clip)

    def _clipped_parameters(self):
        """The trainable parameters (a LoRA run's few hundred, not the model's thousands: the
        profile showed clipping over all of them at ~5 % of a step). FSDP recognises its own
        model only by the full parameter list, so it gets that."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            return self.model.parameters()
        return self.trainable

    # ----------------------------------------------------------------------------- one micro-batch
    def compute_loss(self, batch: dict):
        """Loss and metrics of one batch (``None`` when every group in it was unreadable)."""
        if not batch["ids"]:
            return None
        generators = group_generators(self.config.seed, self.epoch, batch["indices"])
        out = self.objective.loss(self.step(self.model, batch, generators))
        out.metrics.update(self.step.metrics())
        return out

    def updates(self):
        """Every update from where the run stands, epoch after epoch, as the step groups them."""
        while True:
            self.epoch, skip = divmod(self.state["batches"], len(self.loader))
            self.loader.set_epoch(self.epoch)
            self.groups.set_epoch(self.epoch)
            batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            yield from self.step.updates(self._counted(batches), self.compute_loss,
                                         self.config.gradient_accumulation_steps)

    def _counted(self, batches):
        for batch in batches:
            self.state["batches"] += 1
            self.state["skipped_groups"] += batch["skipped"]
            yield batch

    # ----------------------------------------------------------------------------- the run
    def run(self, on_step=None) -> TrainResult:
        """Train to ``max_steps`` updates (continuing from a checkpoint under ``resume``).

        Args:
            on_step: optional ``on_step(update, trainer)`` called after every update, e.g. to
                track a metric of samples during training (the toy benchmark does).
        """
        self._on_step = on_step
        # The main process holds the folder's lock for the whole run (see run_folder).
        lock = run_folder.lock(self.out) if self.accelerator.is_main_process else contextlib.nullcontext()
        with stopping.stop_requests(), lock:
            return self._run()

    def _run(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        if config.overwrite and accelerator.is_main_process:
            run_folder.clear(self.out)
        accelerator.wait_for_everyone()
        resumed = self.loop.resume(config.resume, say=accelerator.print)
        if resumed is not None:
            accelerator.print(f"resumed from {resumed} at step {self.state['step']}")
        self.log = MetricLog(accelerator, self.out / "metrics.jsonl")
        if accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.yaml")
            # Updates logged after the checkpoint by the run that stopped are logged again now.
            self.log.drop_after(self.state["step"])
        accelerator.init_trackers(config.logging.project, config=flat_config(to_dict(config)))
        self.bar = tqdm(total=config.max_steps, initial=self.state["step"], desc="train", unit="step",
                        disable=not (accelerator.is_local_main_process and config.logging.progress_bar))
        with compiler_options(config):
            self.loop.run(self.updates(), on_metrics=self.log.add, after_update=self._after_update,
                          after_checkpoint=self._after_checkpoint, before_stop=self._before_stop)
        self.bar.close()
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

    def _after_update(self, update: int) -> None:
        self.bar.update(1)
        self.step.on_update(update)
        # The step's own values (seconds rolling out and training) add up until the next log line,
        # so a line logged every N updates holds N updates' seconds, not the last one's.
        for key, value in self.step.log_values().items():
            self._since_log[key] = self._since_log.get(key, 0.0) + value
        if update % self.config.logging.every == 0 or update == self.config.max_steps:
            extra, self._since_log = self._since_log, {}
            logged = self.log.flush(update, {**self._counters(), **extra})
            if "train/loss" in logged:
                self.bar.set_postfix(loss=f"{logged['train/loss']:.4g}",
                                     **{k.split("/")[1]: f"{v:.2f}" for k, v in extra.items()})

    def _after_checkpoint(self, update: int) -> None:
        every = self.config.validation.every
        if every and update % every == 0 and self.accelerator.is_main_process:
            if self.config.validation.prompts:
                self._validate(update)
            self._save_previews(update)
        if self._on_step is not None:
            self._on_step(update, self)

    def _before_stop(self, update: int) -> None:
        if self.log.count:  # the updates since the last log line
            extra, self._since_log = self._since_log, {}
            self.log.flush(update, {**self._counters(), **extra})

    def _save_previews(self, update: int) -> None:
        """The step's preview images as a grid, ``validation/rollouts-step-N.png``."""
        images = self.step.preview_images()
        if images is None:
            return
        from torchvision.utils import save_image

        path = self.out / "validation" / f"rollouts-step-{update:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, str(path), nrow=math.ceil(math.sqrt(len(images))))

    def _counters(self) -> dict:
        return {"lr": self.scheduler.get_last_lr()[0], "skipped_steps": self.state["skipped_steps"],
                "skipped_groups": self.state["skipped_groups"]}

    def _validate(self, update: int) -> None:
        resolution = self.config.validation.resolution or self.config.data.resolution
        sample_grid(self.family, self.config.validation, resolution,
                    self.out / "validation" / f"step-{update:07d}.png", frames=self.config.data.frames)

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
                # Wan 2.2's expert pair says where it wrote (diffusers' models return None).
                target = denoiser.save_pretrained(str(target), safe_serialization=True) or target
        if self.config.validation.prompts and accelerator.is_main_process:
            self._validate(self.state["step"])
        accelerator.wait_for_everyone()
        return target


def train(config: TrainConfig) -> TrainResult:
    """Train with ``config`` (see :class:`~diffalign.config.TrainConfig`)."""
    return Trainer(config).run()


__all__ = ["TrainResult", "Trainer", "TrainingError", "train"]
