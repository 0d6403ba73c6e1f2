"""Training checkpoints: ``accelerate.save_state`` written atomically, verified when read, the last
N kept.

A checkpoint folder ``checkpoint-N`` holds:

- accelerate's files: the model (under LoRA only the trainable adapter tensors, see
  :func:`save_only_trainable`; under full fine-tuning every weight), optimiser, scheduler and each
  process's RNG states;
- ``step_state.safetensors``: what the preference step carries from one update to the next
  (Diffusion-DRO's snapshot; :meth:`~diffalign.steps.base.PreferenceStep.state_dict`), when it
  carries anything: once, when it is the same on every process (synchronised weights), else
  ``step_state_<process>.safetensors`` per process;
- ``trainer_state.json``: step, batches consumed, counters;
- ``checksums.json``, written last: the size and SHA-256 of every other file.

It is written as ``.tmp-checkpoint-N`` and renamed once whole, so ``resume`` only ever sees whole
ones; a disk that corrupts a file later (a truncated copy, a bad sector) is caught by the
checksums: ``resume: latest`` takes the newest checkpoint that verifies and says which it skipped
and why. The data order depends only on (seed, epoch) and each group's noise only on (seed, epoch,
row), so a resumed run sees the same data and noise as an uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path

from diffalign.errors import DiffalignError

PREFIX = "checkpoint-"
STATE = "trainer_state.json"
CHECKSUMS = "checksums.json"
STEP_STATE = "step_state.safetensors"
STEP_STATE_OF = "step_state_{}.safetensors"


class CheckpointError(DiffalignError, ValueError):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


def checkpoints(folder: Path) -> list[Path]:
    """Whole checkpoints in ``folder`` (renamed into place), oldest first; not yet verified."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / STATE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def step_of(path: Path) -> int:
    """The optimiser step a checkpoint folder was written at."""
    return int(Path(path).name[len(PREFIX):])


def resolve_resume(resume: str | None, folder: Path, say=print) -> Path | None:
    """The checkpoint to resume from: ``None`` (no resume, or ``latest`` before any checkpoint),
    the newest one of ``folder`` that verifies (``latest``; each skipped one is reported through
    ``say``), or the folder given, which must verify.

    Raises:
        CheckpointError: a given folder that is no checkpoint or does not verify, or ``latest``
            when checkpoints exist and none of them verifies.
    """
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        problem = verify(path)
        if problem:
            raise CheckpointError(f"resume: {resume} cannot be resumed from: {problem}; give another checkpoint, "
                                  "or resume=latest to take the newest one that verifies")
        return path
    found = checkpoints(folder)
    for path in reversed(found):
        problem = verify(path)
        if problem is None:
            return path
        say(f"resume=latest: skipping {path.name}: {problem}")
    if found:
        raise CheckpointError(f"resume=latest: none of the {len(found)} checkpoints in {folder} verifies (see above); "
                              "pass overwrite=true to train again from step 0")
    return None


def verify(path: Path, checksums: bool = True) -> str | None:
    """Why the checkpoint folder ``path`` cannot be trusted (``None``: it verifies): not a
    checkpoint, a missing or unreadable record, or a file whose size or checksum differs from
    the one recorded when it was written (``checksums=False``: sizes only, no file is read, as
    ``check-config`` does before a run)."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder" if not path.exists() else "not a folder"
    if not (path / STATE).is_file():
        return f"no {STATE} (not a checkpoint folder, or one still being written)"
    try:
        json.loads((path / STATE).read_text())
    except (OSError, ValueError) as err:
        return f"{STATE} is unreadable ({type(err).__name__})"
    if not (path / CHECKSUMS).is_file():
        return None  # written before checksums were recorded: taken as it is, loading still checks it
    try:
        recorded = json.loads((path / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS} is unreadable"
    for name, (size, digest) in sorted(recorded.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written (truncated or changed)"
        if checksums and _sha256(file) != digest:
            return f"{name} does not match the checksum recorded when it was written (corrupted)"
    return None


def path_for(folder: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` is (once complete)."""
    return folder / f"{PREFIX}{step:07d}"


def save(accelerator, folder: Path, step: int, state: dict, keep: int, step_state: dict | None = None,
         shared: bool = True) -> Path:
    """Save a checkpoint for ``step`` on every process; prune to the newest ``keep``.

    Args:
        step_state: this process's tensors of the preference step (``{}`` or ``None``: nothing).
        shared: the step state is the same on every process: the main process writes it once.
    """
    from safetensors.torch import save_file

    final = path_for(folder, step)
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _cleaned_up(tmp):
        accelerator.save_state(str(tmp))
        if step_state and (accelerator.is_main_process or not shared):
            name = STEP_STATE if shared else STEP_STATE_OF.format(accelerator.process_index)
            save_file({k: v.detach().contiguous().cpu() for k, v in step_state.items()}, str(tmp / name))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with _cleaned_up(tmp):
            (tmp / STATE).write_text(json.dumps(state, indent=2))
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            sums = {str(p.relative_to(tmp)): [p.stat().st_size, _sha256(p)] for p in files}
            (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> tuple[dict, dict]:
    """Restore model, optimiser, scheduler and RNG states.

    Returns:
        ``(trainer_state, step_state)``: the trainer's counters and this process's step tensors
        (``{}`` when the step keeps none).

    Raises:
        CheckpointError: a file that does not load, or weights that do not fit this run's model
            (another model, LoRA rank or objective).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        accelerator.load_state(str(path))
        files = [Path(path) / name for name in (STEP_STATE, STEP_STATE_OF.format(accelerator.process_index))]
        step_state = next((load_file(str(f)) for f in files if f.exists()), {})
        return json.loads((Path(path) / STATE).read_text()), step_state
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"resume: {path} does not load into this run ({type(err).__name__}: {first}); was it "
                              "written by a run with the same model, LoRA settings and objective?") from err


def save_only_trainable(accelerator, model) -> None:
    """Checkpoint only the trainable tensors of ``model`` (its LoRA adapters) instead of every
    weight: the frozen base is ``model.path`` itself, and resuming loads the adapters back onto it.
    An SDXL LoRA checkpoint falls from the 2.6 B-parameter UNet (~10 GB in fp32) to the adapters
    and their optimiser state. Not under FSDP or DeepSpeed, which save their own sharded state."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def keep_trainable(models, weights, output_dir) -> None:
        for i, m in enumerate(models):
            if m is model:
                weights[i] = {k: v for k, v in weights[i].items() if k in trainable}

    def load_trainable(models, input_dir) -> None:
        from safetensors.torch import load_file

        if model not in models:
            return
        models.remove(model)  # accelerate would ask for every weight; these are the adapters only
        state = load_file(str(Path(input_dir) / "model.safetensors"))
        result = model.load_state_dict(state, strict=False)
        missing = trainable - set(state)
        if result.unexpected_keys or missing:
            wrong = sorted(result.unexpected_keys)[:3] or sorted(missing)[:3]
            raise RuntimeError(f"the checkpoint's adapters do not match this run's ({len(result.unexpected_keys)} "
                               f"unexpected, {len(missing)} missing, e.g. {wrong})")

    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(load_trainable)


@contextmanager
def _cleaned_up(tmp: Path):
    """A checkpoint that fails to write leaves nothing behind (its half is never resumed from, and
    it would hold the space a full disk needs back). A write that failed on a full disk is said to
    have, whatever the writing library called it."""
    try:
        yield
    except Exception as err:
        from diffalign.resources import disk_full

        full = disk_full(tmp.parent) and not (isinstance(err, OSError) and err.errno == errno.ENOSPC)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp)) from err
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
