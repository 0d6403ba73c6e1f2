"""The peer of the training benchmark: diffusers' own Diffusion-DPO SDXL research script.

``examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py`` is what a user runs when
they do not use diffalign. It already runs the preferred and the rejected image in one forward and
takes the reference from the same UNet with its LoRA disabled, but it encodes the images with the
VAE and the captions with both text encoders at every step. The benchmark runs *that file*, given
by path (``--peer-script``, from the user's diffusers checkout; nothing of it is kept here), on the
same pipeline folder and the same pairs, written in Pick-a-Pic's Parquet columns, which it reads
with ``datasets.load_dataset``.

Each run is a child process (``python -m diffalign.benchmarks.peer``): the script configures
logging, ``accelerate`` state and seeds for the whole process, so it must not share one with the
diffalign set-ups. The child imports the script as a module (its imports are start-up, as
importing diffalign is for the other set-ups), then measures ``main(parse_args(argv))``:

- step times from a global optimiser step hook (``register_optimizer_step_post_hook``), so the
  time between two optimiser steps is a whole step, data loading and logging included; in
  lock-step (``--turns``, :mod:`.lockstep`) the same hook waits for the other run's step, untimed;
- peak memory with the same :class:`~.measure.PeakMemory` (RSS on CPU, ``max_memory_allocated``
  on CUDA) or, in a second pass of two steps, :class:`~.measure.TensorMemory` (the CPU tensor peak),
  as for every other set-up.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PEER_SCRIPT = "examples/research_projects/diffusion_dpo/train_diffusion_dpo_sdxl.py"
PEER_PIPELINE = "StableDiffusionXLPipeline"
"""The pipeline class the peer script trains: SDXL only (two text encoders, time ids)."""


def write_pick_a_pic_parquet(folder: Path, pairs: int, resolution: int, seed: int = 0) -> Path:
    """``pairs`` random-noise JPEG pairs in Pick-a-Pic v2's columns (``caption``, ``jpg_0``,
    ``jpg_1``, ``label_0``, ``label_1``, ...), one ``train-00000.parquet`` in ``folder``: what
    the peer script reads with ``load_dataset(folder)``, and diffalign's ``build pick-a-pic``
    converts into the preference format."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)

    def jpeg() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    # Alternate which image won, so both orderings of the columns are exercised.
    label_0 = [float(i % 2 == 0) for i in range(pairs)]
    table = pa.table({
        "caption": [f"a photo of a red cat {i}" for i in range(pairs)],
        "jpg_0": [jpeg() for _ in range(pairs)], "jpg_1": [jpeg() for _ in range(pairs)],
        "label_0": label_0, "label_1": [1.0 - x for x in label_0],
        "has_label": [True] * pairs, "are_different": [True] * pairs,
    })
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "train-00000.parquet")
    return folder


def peer_arguments(args, model: str, parquet: Path, out: Path, steps: int) -> list[str]:
    """The script's command line for the benchmark's settings: a user's run with the benchmark's
    model, data, resolution, batch, LoRA rank, learning rate and precision; the script's other
    defaults as shipped (AdamW with weight decay 1e-2, random flips, β 5000)."""
    if args.mode != "lora":
        raise ValueError("the peer script trains LoRA only")
    return [
        "--pretrained_model_name_or_path", model, "--dataset_name", str(parquet), "--dataset_split_name", "train",
        "--resolution", str(args.resolution), "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(steps), "--rank", str(args.lora_rank), "--learning_rate", str(args.lr),
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--mixed_precision", args.mixed_precision,
        "--output_dir", str(out), "--checkpointing_steps", str(10**9), "--seed", "0",
        "--dataloader_num_workers", str(args.workers or 0), "--report_to", "tensorboard",
    ]


def peer_skipped(args) -> str | None:
    """Why the ``peer`` set-up cannot run with these benchmark arguments (``None``: it can)."""
    if args.peer_script is None:
        return (f"peer: skipped, no --peer-script given; pass --peer-script DIFFUSERS/{PEER_SCRIPT} from a "
                "diffusers checkout (and install the requirements.txt beside it) to measure against it")
    if not Path(args.peer_script).is_file():
        return f"peer: skipped, --peer-script {args.peer_script} is not a file"
    from diffalign.families import FAMILIES

    if FAMILIES[args.family].pipeline_class != PEER_PIPELINE or args.mode != "lora":
        return f"peer: skipped, the peer script trains SDXL with LoRA only (asked: {args.family}, {args.mode})"
    return None


def run_peer(args, model: str, parquet: Path, memory: str, steps: int) -> dict:
    """Run the peer script in a child process; returns ``{"step_times_s", "peak_bytes"}``.

    Args:
        memory: ``"peak"`` (:class:`~.measure.PeakMemory`, timed) or ``"tensor"``
            (:class:`~.measure.TensorMemory`, the profiled pass).
    """
    return start_peer(args, model, parquet, memory, steps).result()


class PeerRun:
    """The peer script running in a child process (:func:`start_peer`); :meth:`result` waits for it.
    ``command`` is the child's, less ``--result``, which points into ``work``."""

    def __init__(self, command: list[str], work: tempfile.TemporaryDirectory, pass_fds: tuple[int, ...] = ()):
        self.work = work
        self.result_path = Path(work.name) / "result.json"
        self.log_path = Path(work.name) / "log.txt"
        command = command[:3] + ["--result", str(self.result_path)] + command[3:]
        # Its output goes to a file: a pipe nobody reads while the other side of a lock-step pair
        # trains could fill, and the child would stop mid-step.
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, pass_fds=pass_fds)

    def stop(self) -> None:
        """End the run early (the other side of its pair failed)."""
        self.process.kill()
        self.process.wait()
        self.work.cleanup()

    def result(self) -> dict:
        try:
            code = self.process.wait()
            if code != 0 or not self.result_path.exists():
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"the peer script failed (exit {code}):\n{tail}")
            return json.loads(self.result_path.read_text())
        finally:
            self.work.cleanup()


def start_peer(args, model: str, parquet: Path, memory: str, steps: int, turns: tuple[int, int] | None = None) -> PeerRun:
    """Start the peer script in a child process (see :func:`run_peer`).

    Args:
        turns: the child's ``(read_fd, write_fd)`` of a lock-step pair (:meth:`.lockstep.Turns.pair`):
            its steps then alternate with the other side's, and its waits are not timed.
    """
    work = tempfile.TemporaryDirectory()
    command = [sys.executable, "-m", "diffalign.benchmarks.peer", "--script", str(args.peer_script),
               "--warmup", str(args.warmup), "--memory", memory, "--device", args.device]
    if turns is not None:
        command += ["--turns", f"{turns[0]},{turns[1]}"]
    command += ["--", *peer_arguments(args, model, parquet, Path(work.name) / "out", steps)]
    return PeerRun(command, work, pass_fds=turns or ())


# ---------------------------------------------------------------------------------- the child process
def _load_script(path: str):
    """Import the peer script as a module (its ``__main__`` block does not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffalign_peer_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(path).parent))
    spec.loader.exec_module(module)
    return module


def _child(argv: list[str]) -> int:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from diffalign.benchmarks.lockstep import Turns, timed_step
    from diffalign.benchmarks.measure import PeakMemory, StepTimer, TensorMemory

    p = argparse.ArgumentParser(prog="python -m diffalign.benchmarks.peer")
    p.add_argument("--script", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory", choices=("peak", "tensor"), default="peak")
    p.add_argument("--device", default="cpu")
    p.add_argument("--turns", default=None, help="READ_FD,WRITE_FD: take turns with another run (lock-step)")
    p.add_argument("script_args", nargs=argparse.REMAINDER)
    ours = p.parse_args(argv)
    script_args = ours.script_args[1:] if ours.script_args[:1] == ["--"] else ours.script_args
    module = _load_script(ours.script)
    script_ns = module.parse_args(script_args)
    timer = StepTimer(ours.device, warmup=ours.warmup)
    turns = None
    if ours.turns is not None:
        read_fd, write_fd = map(int, ours.turns.split(","))
        turns = Turns(read_fd, write_fd, leader=False)
    hook = register_optimizer_step_post_hook(lambda *_: timed_step(timer, turns))
    memory = PeakMemory(ours.device) if ours.memory == "peak" else TensorMemory()
    try:
        with memory:
            timer.tick()  # the clock starts at loading; the warm-up steps drop what precedes them
            module.main(script_ns)
    finally:
        if turns is not None:
            turns.close()  # the other side stops waiting for steps that will not come
    hook.remove()
    Path(ours.result).write_text(json.dumps({"step_times_s": timer.times, "peak_bytes": memory.peak_bytes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
