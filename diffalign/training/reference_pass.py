"""The reference computed once: a pass over the run's batches, before training, that keeps the
reference model's denoising errors, so training runs the policy alone (``reference_pass: auto``).

Why it is exact. Every group's VAE sample, noise, time and prompt dropout come from its own
generator, seeded by ``(seed, epoch, row)`` (:func:`~diffalign.steps.base.group_generators`), and
the reference's weights never change; so the reference's error of a group in an epoch is fixed
before training starts. The pass iterates the training loader itself, epoch by epoch, and runs the
step's reference part on each batch as training would (the same batches, so the same shapes and
kernels): the stored errors are the ones the on-the-fly path computes, bit for bit on one machine.
Training looks each group's errors up by its generator's seed.

Where it applies: objectives whose reference term does not depend on the policy and whose step
forward-noises (Diffusion-DPO, DCPO, RankDPO: :func:`problem` says why not for the others), under
``auto`` when the latent cache serves the run (uncached, the pass would run the VAE and the text
encoders over every batch a second time; ``reference_pass: true`` passes anyway).

Where it is kept: ``DATA/cache/reference/<key digest>/`` beside the latent cache (or, when the data
folder cannot be written, in the run's folder), one file per epoch and process, written whole
(atomically), with ``key.json``: the model, the data's manifest, how batches are made (seed, batch
size, processes, resolution, crops, the latent cache, prompt dropout) and the library versions.
Another run on the same data and seed with another β, learning rate or LoRA rank has the same key
and reuses it (the usual sweep); a run with another model, data or seed has another key, so a
stale pass is never used. An epoch already written is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign.steps import group_generators


def problem(config, objective, cached: bool = True) -> str | None:
    """Why the reference pass does not serve this run (``None``: it does). ``cached``: the latent
    cache serves the run; without it the pass would run the VAE and text encoders a second time
    over every batch, so ``auto`` leaves it off there (``true`` passes anyway)."""
    if config.reference_pass is False:
        return "reference_pass is false"
    if not objective.needs_reference:
        return f"{objective.name} has no reference model"
    if objective.step != "denoising":
        return (f"{objective.name}'s reference term is made on the policy's own samples or inversions "
                f"(its {objective.step} step), which change as it trains")
    if config.reference_pass == "auto" and not cached:
        return ("the run is uncached, and the pass would encode every batch's images and prompts a second "
                "time; set reference_pass: true to pass anyway")
    return None


class ReferenceTable:
    """Each group's reference errors ``[K]``, by the seed of its generator."""

    def __init__(self, errors: dict[int, torch.Tensor] | None = None):
        self.errors = errors or {}

    def add(self, generators, ref_err: torch.Tensor) -> None:
        for g, row in zip(generators, ref_err.detach().cpu()):
            self.errors[g.initial_seed()] = row

    def lookup(self, generators, device) -> torch.Tensor:
        """``[B, K]`` for the groups of ``generators`` (one per group, the trainer's)."""
        missing = [g.initial_seed() for g in generators if g.initial_seed() not in self.errors]
        if missing:
            raise KeyError(f"the reference pass holds no errors for {len(missing)} group(s) of this batch (seed "
                           f"{missing[0]}): it was made for other batches; delete it or set reference_pass: false")
        return torch.stack([self.errors[g.initial_seed()] for g in generators]).to(device)

    def state(self) -> dict[str, torch.Tensor]:
        seeds = sorted(self.errors)
        return {"seeds": torch.tensor(seeds, dtype=torch.int64),
                "errors": torch.stack([self.errors[s] for s in seeds]) if seeds else torch.zeros(0)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> ReferenceTable:
        return cls({int(s): e for s, e in zip(state["seeds"].tolist(), state["errors"])})


def run_key(config, objective, num_processes: int) -> dict:
    """What the stored errors depend on (and nothing else: not β, the learning rate or LoRA)."""
    import diffusers

    from diffalign.data.dataset import PreferenceDataset
    from diffalign.step_settings import prompt_dropout

    data = PreferenceDataset.open(config.data.path)
    manifest = json.dumps(data.manifest, sort_keys=True, default=str)
    model = {**config.model.__dict__, "path": str(Path(config.model.path).expanduser().resolve())
             if Path(config.model.path).expanduser().exists() else config.model.path}
    return {"model": json.dumps(model, sort_keys=True, default=str), "lora": config.lora is not None,
            "mixed_precision": config.mixed_precision, "data": hashlib.sha256(manifest.encode()).hexdigest(),
            "rows": len(data), "data_options": json.dumps(config.data.__dict__, sort_keys=True, default=str),
            "seed": config.seed, "batch_size": config.batch_size, "processes": num_processes,
            "captions": objective.needs_captions, "prompt_dropout": prompt_dropout(config, objective),
            "torch": torch.__version__, "diffusers": diffusers.__version__}


def folder_for(config, key: dict, fallback: Path) -> Path:
    """``DATA/cache/reference/<digest>`` when the data folder can be written, else ``fallback``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(config.data.path) / "cache" / "reference"
    writable = os.access(Path(config.data.path), os.W_OK)
    return (base if writable else Path(fallback) / "reference_pass") / digest


def epochs_needed(max_updates: int, batches_per_update: int, batches_per_epoch: int) -> int:
    return math.ceil(max_updates * batches_per_update / batches_per_epoch)


def prepare(trainer) -> ReferenceTable | None:
    """The run's table: loaded where the pass is written, the missing epochs computed first."""
    config, accelerator = trainer.config, trainer.accelerator
    why = problem(config, trainer.objective, cached=trainer.cache_plan.cached)
    if why is not None:
        return None
    key = run_key(config, trainer.objective, accelerator.num_processes)
    folder = folder_for(config, key, trainer.out)
    epochs = epochs_needed(config.max_steps, config.gradient_accumulation_steps, len(trainer.loader))
    table = ReferenceTable()
    todo = []
    for epoch in range(epochs):
        path = folder / f"epoch-{epoch:05d}-rank-{accelerator.process_index}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            table.errors.update(ReferenceTable.from_state(load_file(str(path))).errors)
        else:
            todo.append((epoch, path))
    if todo:
        accelerator.print(f"reference pass: {len(todo)} of {epochs} epoch(s) to compute into {folder}")
        _compute(trainer, todo, folder, key, table)
    else:
        accelerator.print(f"reference pass: reading {folder}")
    return table


def _compute(trainer, todo, folder: Path, key: dict, table: ReferenceTable) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True))
    config, step = trainer.config, trainer.step
    bar = tqdm(total=len(todo) * len(trainer.loader), desc="reference pass", unit="batch",
               disable=not (trainer.accelerator.is_local_main_process and config.logging.progress_bar))
    for epoch, path in todo:
        part = ReferenceTable()
        trainer.loader.set_epoch(epoch)
        trainer.groups.set_epoch(epoch)
        for batch in trainer.loader:
            if batch["ids"]:
                generators = group_generators(config.seed, epoch, batch["indices"])
                part.add(generators, step.reference_errors(batch, generators))
            bar.update(1)
        partial = path.with_suffix(".partial")
        save_file(part.state(), str(partial))
        os.replace(partial, path)  # written whole: a killed pass leaves no half epoch
        table.errors.update(part.errors)
    bar.close()


__all__ = ["ReferenceTable", "epochs_needed", "folder_for", "prepare", "problem", "run_key"]
