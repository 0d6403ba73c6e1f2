"""Training a step-aware preference model (SPM) on human pairs, as SPO does (Liang et al., arXiv
2406.04314; RockeyCoss/SPO ``step_aware_preference_model/trainer/tasks/spm_task.py``).

For each pair ``(I_w, I_l, c)`` of a diffalign preference dataset (``K = 2``, best first):

1. draw one time ``t`` and one noise ``ε`` shared by both images (the family's
   ``sample_noise_and_time``: uniform over the 1000 DDPM steps for SD/SDXL);
2. VAE-encode both images and noise them to ``t``;
3. run the **frozen** base model once, with classifier-free guidance ``w`` (5), to get ``x̂0`` of
   each, and decode it (:func:`~diffalign.rewards.step_aware.pixels_from_noisy`);
4. logits ``z = S(x̂0, t, c)`` for the two images, loss
   ``ℓ = −Σ_i y_i·log softmax(z)_i + [tie]·log ½`` with ``y = (1, 0)``, or ``(½, ½)`` when the
   row's ranks are equal (a tie); each pair weighted by ``1 / #pairs of its prompt`` (PickScore's
   convention), normalised over the batch.

Only the SPM trains (AdamW, defaults of the SD1.5 SPM: lr 3e-6, weight decay 0.3, 500 warmup
steps then linear decay; the authors' DeepSpeed ``WarmupDecayLR`` warms up log-shaped).

Resumable: every ``checkpoint_every`` steps ``accelerate.save_state`` writes model, optimiser,
schedule and RNG states plus the step; which rows a step reads and its noise depend only on
``(seed, step)``, so a resumed run takes exactly the steps an uninterrupted one would.

Held-out accuracy and loss (:mod:`~diffalign.training.step_aware_eval`): a deterministic
fraction of the pairs (by a hash of the row id) never trains; accuracy at each evaluation time
is the mean over held-out pairs of ``y_0·[z_0 > z_1] + y_1·[z_1 > z_0]`` (a tie counts ½ unless
the scores are equal, as the authors count) and the loss the mean of step 4's ``ℓ``, with the
same noise at every evaluation; at ``t = 0`` the clean images are scored, as the authors do.
Evaluations run every ``eval_every`` steps and at the last step.

Early stopping and the best model: with ``patience`` set, the run stops once that many
evaluations in a row have not lowered the mean held-out *loss* by more than ``min_delta`` (the
loss, not the accuracy: the accuracy changes only when a pair flips, so it moves in coarse steps
and misses the over-confidence SPO then exploits; see :mod:`~diffalign.training.step_aware_eval`),
and ``final/`` holds the weights of the best evaluation rather than the last step's
(``keep_best``, on by default with ``patience``). The record of evaluations and a copy of the
best weights travel in every checkpoint, so a stopped and resumed run stops at the same step
with the same ``final/`` as an uninterrupted one.

Output folder: ``config.json``, ``metrics.jsonl`` (one line per step and per evaluation),
``heldout_accuracy.json`` (the last evaluation), ``heldout_history.json`` (every evaluation's
step, loss and accuracy, the best step, whether the run stopped early),
``checkpoints/checkpoint-NNNNNNN/`` and, when done, ``final/`` (an SPM folder for
:meth:`StepAwarePreferenceModel.from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffalign.rewards.step_aware import StepAwarePreferenceModel
from diffalign.steps.base import MicroBatch
from diffalign.training import checkpoint
from diffalign.training.step_aware_eval import (HeldoutRecord, estimate_pixels, heldout_accuracy, pair_labels, pair_logits,
                                                pair_losses, seeded_generator, spm_pair_loss)
from diffalign.training.update import UpdateLoop, UpdateSettings

AUTHORS_EVAL_INDICES = (0, 251, 501, 701, 951)
"""The DDPM indices the authors report accuracy at (``spm_task.py``)."""


@dataclass
class SPMTrainConfig:
    """Everything one SPM training run depends on (see the module docstring).

    Attributes:
        data: preference dataset folder (``K = 2``).
        base_model: the diffusers pipeline whose ``x̂0`` the SPM learns to score (frozen).
        out: output folder.
        init: an SPM folder (``save_pretrained``) or a CLIP/PickScore model (default PickScore_v1).
        steps: optimiser steps; batch_size: pairs per step and process; grad_accum: micro-batches per step.
        guidance: CFG scale of the base model's ``x̂0`` (5.0 in the paper).
        heldout_fraction: share of pairs kept out of training for the accuracy.
        eval_times: normalised times of the held-out accuracy (default the authors' DDPM indices / 999).
        eval_every: also evaluate every N steps (0: only at the end).
        patience: stop once this many evaluations in a row have not improved the mean held-out
            pair loss (nats, over ``eval_times``) by more than ``min_delta``; ``None``: train all
            ``steps``. Needs ``eval_every > 0`` and held-out pairs.
        keep_best: ``final/`` holds the best evaluation's weights (a CPU copy of the trainable
            tensors is kept and checkpointed: the SPM's size again in memory and in each checkpoint
            when all of it trains, the time layers only with ``train_parts="time"``); ``None``: on
            exactly when ``patience`` is set.
        checkpoint_every: save a resumable checkpoint every N steps; keep_checkpoints: how many to keep.
        resume: ``None``, ``"latest"`` (start fresh when there is none) or a checkpoint folder.
        train_parts: ``"all"`` (the paper) or ``"time"`` (only the added time conditioning).
        base_dtype: dtype of the frozen base model (``"float32"``, ``"bfloat16"``, ``"float16"``).
        mixed_precision: accelerate's ``"no"``, ``"bf16"`` or ``"fp16"`` for the SPM.
    """

    data: str
    base_model: str
    out: str
    init: str | None = None
    steps: int = 8000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-6
    weight_decay: float = 0.3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    guidance: float = 5.0
    resolution: int = 512
    heldout_fraction: float = 0.05
    eval_times: tuple[float, ...] = field(default_factory=lambda: tuple(i / 999 for i in AUTHORS_EVAL_INDICES))
    eval_every: int = 0
    patience: int | None = None
    min_delta: float = 0.0
    keep_best: bool | None = None
    eval_batch_size: int = 16
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: str | None = None
    seed: int = 0
    train_parts: str = "all"
    base_dtype: str = "float32"
    mixed_precision: str = "no"

    # Settings a resumed run may change: the rest decides which steps are taken and how.
    RESUMABLE_CHANGES = ("resume", "eval_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints", "eval_times")

    def __post_init__(self):
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if min(self.steps, self.batch_size, self.grad_accum) < 1:
            raise ValueError("steps, batch_size and grad_accum must be at least 1")
        if any(not 0 <= t <= 1 for t in self.eval_times):
            raise ValueError(f"eval_times are normalised times in [0, 1], got {self.eval_times}")
        if self.patience is not None and (self.patience < 1 or self.eval_every < 1):
            raise ValueError(f"patience (got {self.patience}) counts evaluations: it needs patience >= 1 and "
                             f"eval_every >= 1 (got {self.eval_every})")
        if (self.patience is not None or self.keep_best) and self.heldout_fraction == 0:
            raise ValueError("patience and keep_best judge the model on held-out pairs: set heldout_fraction > 0")
        self.betas, self.eval_times = tuple(self.betas), tuple(self.eval_times)

    @property
    def selects_best(self) -> bool:
        """Whether ``final/`` is the best evaluation's model (``keep_best``, by default ``patience is not None``)."""
        return self.keep_best if self.keep_best is not None else self.patience is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------- the run
def split_heldout(ids: list[str], fraction: float) -> tuple[list[int], list[int]]:
    """``(train, heldout)`` row indices: the ``round(fraction · N)`` rows (at least one when
    ``fraction > 0``) with the smallest SHA-256 of their id are held out, so the split depends
    only on the ids, not on row order or seed."""
    order = sorted(range(len(ids)), key=lambda i: hashlib.sha256(ids[i].encode()).hexdigest())
    held = min(len(ids) - 1, max(1, round(fraction * len(ids)))) if fraction > 0 else 0
    return sorted(order[held:]), sorted(order[:held])


def load_initial_spm(init: str | None, seed: int = 0, dtype=None) -> StepAwarePreferenceModel:
    """An SPM folder (has ``step_aware.json``) as saved, else a CLIP/PickScore model with the
    time conditioning at identity (the paper starts from PickScore_v1), its random part drawn
    from ``seed`` so that every run with the same settings starts from the same model."""
    if init is not None and (Path(init) / "step_aware.json").is_file():
        return StepAwarePreferenceModel.from_pretrained(init, dtype=dtype)
    model = StepAwarePreferenceModel.from_clip(init, dtype=dtype)
    model.time.reset_parameters(seeded_generator(seed, 3))
    return model


def _check_same_settings(config: SPMTrainConfig, out: Path) -> None:
    saved = json.loads((out / "config.json").read_text())
    now = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as saved
    # A run saved before a setting existed ran with its default.
    defaults = {f.name: f.default for f in dataclasses.fields(SPMTrainConfig) if f.default is not dataclasses.MISSING}
    free = set(SPMTrainConfig.RESUMABLE_CHANGES)
    if config.patience is not None or config.selects_best:
        # The best-so-far loss was measured at these times, with this noise (set by the batch size):
        # another evaluation would not compare with it.
        free -= {"eval_every", "eval_times", "eval_batch_size"}
    changed = [k for k in now if k not in free and saved.get(k, defaults.get(k)) != now[k]]
    if changed:
        raise ValueError(f"resume: {out} was trained with other settings ({', '.join(changed)}); "
                         "resume with the same ones, or train into a new folder")


class _Order:
    """Which training rows slot ``n`` of the sample stream reads: epochs of seeded permutations."""

    def __init__(self, rows: list[int], seed: int):
        self.rows, self.seed, self._perms = rows, seed, {}

    def __getitem__(self, slot: int) -> int:
        epoch, place = divmod(slot, len(self.rows))
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(len(self.rows), generator=seeded_generator(self.seed, 0, epoch))}
        return self.rows[int(self._perms[epoch][place])]


def _micro_batch(config: SPMTrainConfig, accelerator, spm, family, groups, order: _Order, per_prompt: dict,
                 step: int, micro: int) -> MicroBatch:
    """Micro-batch ``micro`` of update ``step``: its rows and noise depend only on
    ``(seed, step, micro-batch, process)``, so a resumed run takes the updates an uninterrupted one would."""
    from diffalign.data.loader import collate_groups
    from diffalign.objectives import ObjectiveOutput

    def forward():
        world, rank = accelerator.num_processes, accelerator.process_index
        first = (((step - 1) * config.grad_accum + micro) * world + rank) * config.batch_size
        batch = collate_groups([groups[order[slot]] for slot in range(first, first + config.batch_size)])
        if not batch["ids"]:  # every image of the micro-batch unreadable: the update is skipped
            return None
        pixels, times = estimate_pixels(family, batch, config.guidance, seeded_generator(config.seed, 2, step, micro, rank))
        weights = torch.tensor([1.0 / per_prompt[p] for p in batch["prompts"]])
        with accelerator.autocast():
            logits = pair_logits(spm, pixels.to(accelerator.device), batch["prompts"], times)
            loss = spm_pair_loss(logits, pair_labels(batch).to(logits.device), weights)
        return ObjectiveOutput(loss, {"loss": loss.detach()})

    return MicroBatch(forward)


def train_step_aware(config: SPMTrainConfig, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train an SPM (module docstring).

    Args:
        stop_after: stop (with a checkpoint) once this step is done, e.g. to fit a time slot;
            a later run with ``resume="latest"`` continues from there.
        progress: show a tqdm bar.

    Returns:
        ``{"step": the last step taken, "loss": its training loss (None when this call took no
        step), "heldout": the evaluation of the model in final/ (the best one under keep_best,
        else the last; in an unfinished run: so far), "best": {"step", "accuracy" (per
        t), "mean", "loss" (per t, nats), "mean_loss"} of the lowest held-out loss,
        "history": [{"step", "heldout_loss", "mean_accuracy"}, ...], "stopped_early": bool,
        "out": folder}`` on the main process (elsewhere ``heldout``, ``best`` and ``history`` are empty).
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from diffalign.data.loader import GroupDataset
    from diffalign.families import load

    out = Path(config.out)
    resume = checkpoint.resolve_resume(config.resume, out / "checkpoints")
    if resume is not None:
        _check_same_settings(config, out)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    main = accelerator.is_main_process
    groups = GroupDataset(config.data, resolution=config.resolution, center_crop=True, random_flip=False, seed=config.seed)
    if groups.data.group_size != 2:
        raise ValueError(f"{config.data} has groups of {groups.data.group_size} images; the SPM trains on pairs (K = 2)")
    ids = groups.data.column("id")
    train_rows, heldout_rows = split_heldout(ids, config.heldout_fraction)
    prompts = groups.data.column("prompt")
    per_prompt: dict[str, int] = {}
    for row in train_rows:
        per_prompt[prompts[row]] = per_prompt.get(prompts[row], 0) + 1

    family = load(config.base_model, dtype=getattr(torch, config.base_dtype), device=accelerator.device)
    family.denoiser.eval().requires_grad_(False)
    spm = load_initial_spm(config.init, config.seed).to(accelerator.device)
    params = spm.train_parameters(config.train_parts)
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    # A prepared scheduler steps once per process per optimiser step, hence the factor.
    world = accelerator.num_processes
    schedule = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps * world,
                             num_training_steps=config.steps * world)
    spm, optimizer, schedule = accelerator.prepare(spm, optimizer, schedule)
    model = accelerator.unwrap_model(spm)
    last = min(config.steps, stop_after if stop_after is not None else config.steps)
    settings = UpdateSettings(last, config.max_grad_norm, checkpoint_every=config.checkpoint_every,
                              keep_checkpoints=config.keep_checkpoints)
    # The record of evaluations rides in every checkpoint, so a resumed run knows the best so far.
    record = HeldoutRecord(config.patience, config.min_delta, config.selects_best)
    loop = UpdateLoop(accelerator, spm, optimizer, schedule, out / "checkpoints", settings, lambda: params, carried=record)
    if resume is not None:
        loop.load(resume)
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run: no lines of an earlier one
    start = loop.update
    order = _Order(train_rows, config.seed)
    per_step = config.batch_size * world * config.grad_accum

    def evaluate(step: int) -> None:
        result = {"step": step, **heldout_accuracy(model, family, groups, heldout_rows, config.eval_times,
                                                   config.guidance, config.eval_batch_size, config.seed)}
        (out / "heldout_accuracy.json").write_text(json.dumps(result, indent=2))
        with open(out / "metrics.jsonl", "a") as log:
            log.write(json.dumps({"heldout": result}) + "\n")
        print(f"held-out pair accuracy at step {step} ({result['pairs']} pairs): "
              + ", ".join(f"t={t} (DDPM {result['ddpm_index'][t]}): {a}" for t, a in result["accuracy"].items())
              + f"; mean {result['mean']}; held-out loss {result['mean_loss']}")
        record.record(result, lambda: {name: p for name, p in model.named_parameters() if p.requires_grad},
                      can_stop=step < config.steps)
        (out / "heldout_history.json").write_text(json.dumps(record.summary(), indent=2))
        if record.stopped:
            print(f"early stopping at step {step}: the held-out loss has not improved for {record.since_best} "
                  f"evaluations since step {record.summary()['best_step']}")

    def updates():
        for step in range(start + 1, last + 1):
            if record.stopped:  # asked for after the update before this one (or before the resume)
                return
            yield [_micro_batch(config, accelerator, spm, family, groups, order, per_prompt, step, micro)
                   for micro in range(config.grad_accum)]

    losses: list[float] = []
    seen = {"loss": None}

    def after_update(step: int) -> None:
        total = sum(value / config.grad_accum for value in losses)
        losses.clear()
        seen["loss"] = total
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if main:
            with open(out / "metrics.jsonl", "a") as log:
                log.write(json.dumps({"step": step, "loss": total, "lr": schedule.get_last_lr()[0],
                                      "pairs_seen": step * per_step}) + "\n")
        # Evaluated before this update's checkpoint (not after it, like previews), so the checkpoint
        # holds the record with this evaluation: a run resumed from it neither repeats nor misses one.
        if step == config.steps or (config.eval_every > 0 and step % config.eval_every == 0):
            if main:
                evaluate(step)
            # Only the main process evaluates; every process must stop after the same update.
            flag = torch.tensor([float(record.stopped)], device=accelerator.device)
            record.stopped = accelerator.reduce(flag, reduction="sum").item() > 0

    def after_checkpoint(step: int) -> None:
        if (step == last or record.stopped) and not loop.checkpoint_due(step):
            loop.save()  # the last update of this run is always resumable from

    bar = tqdm(total=config.steps, initial=start, disable=not (progress and main), desc="SPM training")
    loop.run(updates(), on_metrics=lambda metrics: losses.append(metrics["loss"].item()),
             after_update=after_update, after_checkpoint=after_checkpoint)
    bar.close()
    if main and (loop.update >= config.steps or record.stopped):
        if record.last is None:  # resumed after the last step from a checkpoint without a record
            evaluate(loop.update)
        if record.keep_best and record.weights:  # the run is over: its model may change
            unexpected = model.load_state_dict(record.weights, strict=False).unexpected_keys
            if unexpected:
                raise RuntimeError(f"the best evaluation's weights do not fit this SPM (e.g. {unexpected[:3]})")
        model.save_pretrained(out / "final")
    accelerator.wait_for_everyone()
    return {"step": loop.update, "loss": seen["loss"], "heldout": record.final, "best": record.summary()["best"],
            "history": record.history, "stopped_early": record.stopped, "out": str(out)}


__all__ = ["AUTHORS_EVAL_INDICES", "HeldoutRecord", "SPMTrainConfig", "estimate_pixels", "heldout_accuracy",
           "load_initial_spm", "pair_labels", "pair_losses", "spm_pair_loss", "split_heldout", "train_step_aware"]
