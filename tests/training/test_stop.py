"""SIGTERM and SIGINT during training: the current optimiser step finishes, a checkpoint is
written, the command says where and how to resume and exits 128 + the signal; resuming gives
the weights of an uninterrupted run."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.training import Trainer

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"


def _args(tiny_path, data, out, *extra):
    return ["train", "--config", str(CONFIG), f"model.path={tiny_path('sd15')}", f"data.path={data}",
            f"output_dir={out}", "batch_size=1", "optim.lr=1e-2", "objective.beta=500", *extra]


def _lora(out):
    return load_file(str(Path(out) / "lora" / "pytorch_lora_weights.safetensors"))


def _steps(out):
    return [json.loads(line)["step"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_saves_and_resumes(signum, code, tiny_path, pair_data, tmp_path, monkeypatch,
                                                      capsys):
    straight = tmp_path / "straight"
    assert main(_args(tiny_path, pair_data, straight, "max_steps=6")) == 0

    original = Trainer._after_update

    def signalled(self, *args):
        original(self, *args)
        if self.state["step"] == 2:
            signal.raise_signal(signum)  # arrives during step 2's bookkeeping; step 3 still completes

    monkeypatch.setattr(Trainer, "_after_update", signalled)
    out = tmp_path / "stopped"
    # What the run must give back: Python's default, or SIG_IGN when the suite was started in the
    # background (a shell's `&` or nohup ignores SIGINT in the child), never a fixed expectation.
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    capsys.readouterr()
    assert main(_args(tiny_path, pair_data, out, "max_steps=6", "checkpoint_every=0")) == code
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name}: update 3 of 6 is saved in" in err and "resume=latest" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-0000003"]
    assert _steps(out) == [1, 2, 3] and not (out / "lora").exists()
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are given back

    monkeypatch.setattr(Trainer, "_after_update", original)
    assert main(_args(tiny_path, pair_data, out, "max_steps=6", "checkpoint_every=0", "resume=latest")) == 0
    _assert_same(_lora(straight), _lora(out))
    assert _steps(out) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # 22 s of subprocess; the in-process signal tests above keep stop-and-resume in the default suite
def test_sigterm_to_a_training_process(tiny_path, pair_data, tmp_path, diffalign_child):
    """What SLURM and Kubernetes do: SIGTERM to the process, mid-run."""
    out, steps = tmp_path / "run", 8
    args = _args(tiny_path, pair_data, out, f"max_steps={steps}", "checkpoint_every=0", "logging.progress_bar=false")
    argv, env = diffalign_child(*args)  # this process's kernels: the child then rounds as we do
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(_steps(out)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    saved = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(saved) == 1 and f"is saved in {out / 'checkpoints' / saved[0]}" in err
    stopped_at = int(saved[0].split("-")[-1])
    assert 2 <= stopped_at < steps and _steps(out)[-1] == stopped_at  # whole steps only, all of them logged

    assert main(_args(tiny_path, pair_data, out, f"max_steps={steps}", "checkpoint_every=0", "resume=latest")) == 0
    straight = tmp_path / "straight"
    assert main(_args(tiny_path, pair_data, straight, f"max_steps={steps}", "checkpoint_every=0")) == 0
    _assert_same(_lora(straight), _lora(out))
    assert _steps(out) == list(range(1, steps + 1))
