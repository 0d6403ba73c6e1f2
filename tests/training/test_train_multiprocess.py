"""Training on two CPU processes (gloo), as on two GPUs: the same run as one process with the
same global batch."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"


ACCELERATE = Path(__file__).resolve().parents[2] / "training" / "accelerate"
LAUNCHES = {
    "ddp": ["--multi_gpu", "--num_processes", "2", "--main_process_port", "0"],
    # The shipped FSDP config, on CPUs: accelerate (1.15) turns FSDP on only for GPUs, so this is the
    # same data-parallel run, and the trainer says so.
    "fsdp-config": ["--config_file", str(ACCELERATE / "fsdp.yaml"), "--num_processes", "2", "--main_process_port", "0"],
}


def _launch(args, *, check=True, **kwargs):
    return subprocess.run([shutil.which("accelerate"), "launch", *args], check=check, timeout=600, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("launch", sorted(LAUNCHES))
def test_two_processes_match_one(launch, tiny_path, pair_data, tmp_path):
    common = [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", "max_steps=4", "lora=null"]
    assert main(["train", "--config", str(CONFIG), *common, f"output_dir={tmp_path / 'one'}", "batch_size=2"]) == 0
    run = _launch([*LAUNCHES[launch], "-m", "diffalign", "train", "--config", str(CONFIG), *common,
                   f"output_dir={tmp_path / 'two'}", "batch_size=1"], capture_output=True, text=True)
    if launch == "fsdp-config":
        assert "warning: the launch asks for FSDP (ACCELERATE_USE_FSDP), which accelerate runs only on GPUs" in run.stdout
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # logged once, by the main process
    for a, b in zip(one, two):
        # Same groups, same noise: the per-step loss over the global batch agrees (to the rounding
        # of batch-size-dependent kernels, amplified by β/2 = 250).
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=2e-4)
        assert b["train/err_w"] == pytest.approx(a["train/err_w"], abs=1e-5)
    wa = load_file(str(next((tmp_path / "one" / "final" / "unet").glob("*.safetensors"))))
    wb = load_file(str(next((tmp_path / "two" / "final" / "unet").glob("*.safetensors"))))
    # Adam divides by the gradient's own scale, so all-reduce rounding can move a weight by up
    # to a fraction of lr (1e-3) per step; a different batch split would move them by ~lr.
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-4


@pytest.mark.slow
def test_sigterm_stops_every_process_after_the_same_step(tiny_path, pair_data, tmp_path):
    """SIGTERM to the launcher, as a scheduler sends it: torchrun passes it to both processes,
    which agree on the step to stop after, write one checkpoint together, and the resumed run
    ends with the weights of an uninterrupted one."""
    import signal
    import time

    steps = 40
    train = ["-m", "diffalign", "train", "--config", str(CONFIG), f"model.path={tiny_path('sd15')}",
             f"data.path={pair_data}", f"max_steps={steps}", "batch_size=1", "checkpoint_every=0",
             "logging.progress_bar=false"]
    out = tmp_path / "stopped"
    proc = subprocess.Popen([shutil.which("accelerate"), "launch", *LAUNCHES["ddp"], *train, f"output_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and err.count("stopped by SIGTERM: update") == 1, err[-3000:]  # printed by the main process
    saved = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(saved) == 1, saved
    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == int(saved[0].split("-")[-1]) < steps

    _launch([*LAUNCHES["ddp"], *train, f"output_dir={out}", "resume=latest"])
    _launch([*LAUNCHES["ddp"], *train, f"output_dir={tmp_path / 'straight'}"])
    a = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "straight" / "lora" / "pytorch_lora_weights.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_two_processes_build_the_cache_together_and_train_from_it(tiny_path, tmp_path):
    """``data.cache: auto`` under ``accelerate launch``: the first run's two processes both decide
    to build, build the cache together (its split by shard is tested in
    ``tests/data/test_cache_multiprocess.py``), agree it is finished and train from it; the run
    matches one process trained from that cache."""
    from conftest import write_groups

    data = write_groups(tmp_path / "prefs", k=2, rows=4, captions=False)
    common = [f"model.path={tiny_path('sd15')}", f"data.path={data}", "max_steps=2"]
    run = _launch(["--multi_gpu", "--num_processes", "2", "--main_process_port", "0", "-m", "diffalign", "train",
                   "--config", str(CONFIG), *common, f"output_dir={tmp_path / 'two'}", "batch_size=1"],
                  capture_output=True, text=True)
    assert run.stdout.count("latent cache: building") == 1  # printed by the main process
    meta = json.loads((data / "cache" / "sd-32" / "cache.json").read_text())
    assert meta["complete"] and meta["shards"] == 1
    assert main(["train", "--config", str(CONFIG), *common, f"output_dir={tmp_path / 'one'}", "batch_size=2"]) == 0
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["spo", "diffusion_dro"])
def test_a_rollout_step_on_two_processes_gives_the_loss_of_one(objective, tiny_path, pair_data, expert_data,
                                                               step_aware_model, tmp_path):
    """Each process rolls out its own prompts with each group's own generator, so two processes
    with one prompt each sample what one process with both does, and the loss is the same."""
    config = CONFIG.with_name(f"{objective}.yaml")
    common = [f"model.path={tiny_path('sd15')}", "max_steps=3", "logging.progress_bar=false",
              f"data.path={expert_data if objective == 'diffusion_dro' else pair_data}"]
    if objective == "spo":  # every candidate pair kept: each prompt gives the same number of pairs
        common += [f"rollout.preference_model={step_aware_model}", "rollout.threshold=0.0"]
    assert main(["train", "--config", str(config), *common, f"output_dir={tmp_path / 'one'}", "batch_size=2"]) == 0
    run = _launch([*LAUNCHES["ddp"], "-m", "diffalign", "train", "--config", str(config), *common,
                   f"output_dir={tmp_path / 'two'}", "batch_size=1"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-5, rel=1e-4)
        assert b["train/err_w"] == pytest.approx(a["train/err_w"], abs=1e-5, rel=1e-4)
        assert b["time/rollout_s"] > 0
