"""Online RL through the trainer (grpo and diffusion_nft on the tiny SD1.5 and the toy reward): a
SIGTERM between two updates of one collection resumes inside that collection to the weights of an
uninterrupted run (DiffusionNFT's old weights included), and two processes give the losses and the
weights of one with the same global batch."""

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.steps.nft import NFTStep
from diffalign.steps.online import OnlineStep
from diffalign.training import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny"
STEP_CLASSES = {"grpo": OnlineStep, "diffusion_nft": NFTStep}


@pytest.fixture(scope="module")
def toy_prompts(tmp_path_factory):
    from diffalign.testing import write_prompt_dataset

    return write_prompt_dataset(tmp_path_factory.mktemp("prompts") / "prompts",
                                ["a red circle", "a blue square", "a green circle", "a yellow square"])


def _args(tiny_path, data, out, *extra, objective="grpo"):
    return ["train", "--config", str(CONFIGS / f"{objective}.yaml"), f"model.path={tiny_path('sd15')}", f"data.path={data}",
            f"output_dir={out}", "logging.progress_bar=false", *extra]


def _lora(out):
    return load_file(str(Path(out) / "lora" / "pytorch_lora_weights.safetensors"))


def _log(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", sorted(STEP_CLASSES))
def test_a_sigterm_inside_a_collection_resumes_inside_it(objective, tiny_path, toy_prompts, tmp_path, monkeypatch,
                                                         capsys):
    """Two updates per collection, 4 updates. The signal arrives after update 2; update 3 (the
    first of the second collection) completes and is saved with that collection half used. The
    resumed run takes update 4 from the saved collection (no new rollout) and ends with the
    weights of the straight run, to 1e-6. DiffusionNFT's old weights moved after update 2 and
    predict in update 4: resumed from anything but the saved ones, the weights would differ."""
    straight = tmp_path / "straight"
    assert main(_args(tiny_path, toy_prompts, straight, "max_steps=4", objective=objective)) == 0
    original = Trainer._after_update

    def signalled(self, *args):
        original(self, *args)
        if self.state["step"] == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_after_update", signalled)
    out = tmp_path / "stopped"
    capsys.readouterr()
    assert main(_args(tiny_path, toy_prompts, out, "max_steps=4", objective=objective)) == 143
    assert "update 3 of 4 is saved in" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "_after_update", original)
    rollouts = []
    step_class = STEP_CLASSES[objective]
    real_collect = step_class.collect

    def counted(self, *args, **kwargs):
        rollouts.append(args[-1])
        return real_collect(self, *args, **kwargs)

    monkeypatch.setattr(step_class, "collect", counted)
    assert main(_args(tiny_path, toy_prompts, out, "max_steps=4", "resume=latest", objective=objective)) == 0
    assert rollouts == []  # update 4 came from the saved collection
    a, b = _lora(straight), _lora(out)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert [r["step"] for r in _log(out)] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("objective", sorted(STEP_CLASSES))
def test_two_processes_give_the_losses_and_weights_of_one(objective, tiny_path, toy_prompts, tmp_path):
    """Each process rolls out its own prompts with each prompt's generator, the rewards are gathered
    before the advantages (global std), and with one update per collection each update's gradient
    is the mean over the same (image, step) terms however they are split: micro-batches of 4 images,
    4 images per prompt, so one process's 2 micro-batches hold what the two processes' 1 each do."""
    common = ["max_steps=3", "rollout.updates_per_collection=1", "rollout.micro_batch=4"]
    assert main(_args(tiny_path, toy_prompts, tmp_path / "one", *common, "batch_size=2", objective=objective)) == 0
    two = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
           "-m", "diffalign",
           *_args(tiny_path, toy_prompts, tmp_path / "two", *common, "batch_size=1", objective=objective)[0:]]
    run = subprocess.run(two, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one_log, two_log = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in two_log] == [1, 2, 3]
    for a, b in zip(one_log, two_log, strict=True):
        for key in ("train/loss", "train/online/reward_mean", "train/online/reward_std"):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-4), key
    a, b = _lora(tmp_path / "one"), _lora(tmp_path / "two")
    for key in a:
        # Adam divides each step by its gradient's root second moment: elements whose gradient is near 0 turn
        # rounding differences of the gradient (two all-reduced halves vs one sum) into ~1e-5 of weight.
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=5e-5)


def test_a_log_line_holds_the_seconds_of_every_update_since_the_last(tiny_path, toy_prompts, tmp_path):
    """Logged every 2 updates with 2 updates per collection: the line's update is the second of
    its collection, which rolls out nothing; the line still shows the collection's rollout time."""
    assert main(_args(tiny_path, toy_prompts, tmp_path / "run", "max_steps=2", "logging.every=2")) == 0
    rows = _log(tmp_path / "run")
    assert [r["step"] for r in rows] == [2]
    assert all(r["time/rollout_s"] > 0 and r["time/scoring_s"] > 0 and r["time/train_s"] > 0 for r in rows)
