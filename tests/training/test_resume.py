"""Kill and resume: every objective, stopped at three phases of its run, continues to the weights,
losses and step state of an uninterrupted run, to the bit.

A killed run (SIGKILL, a lost node) leaves its last whole checkpoint and nothing after it, so
resuming from checkpoint ``k`` of an uninterrupted run that checkpointed every step is what a
run killed at any moment after step ``k`` resumes from. The phases: after step 1 (mid-epoch),
step 2 (an epoch boundary: 4 rows, batches of 2) and step 3 (mid-epoch again); for
Diffusion-DRO, whose snapshot is refreshed every 3 updates, the first two lie between refreshes
(the snapshot lags the policy) and the third on one.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.objectives import OBJECTIVES
from diffalign.training import checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny"
STEPS = 4
PHASES = (1, 2, 3)


def _args(objective, tiny_path, data, out, step_aware_model, *extra):
    args = ["train", "--config", str(CONFIGS / f"{objective}.yaml"), f"model.path={tiny_path('sd15')}",
            f"data.path={data}", f"output_dir={out}", f"max_steps={STEPS}", "checkpoint_every=1",
            "keep_checkpoints=0", "logging.progress_bar=false", *extra]
    if objective == "spo":
        args.append(f"rollout.preference_model={step_aware_model}")
    if objective == "diffusion_dro":
        args.append("rollout.refresh_every=3")
    return args


def _losses(out):
    return [json.loads(line)["train/loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


CARRIES_STATE = ("diffusion_dro", "grpo", "dance_grpo", "diffusion_nft")
"""Diffusion-DRO's snapshot; the online objectives' collection (per process; DiffusionNFT's old weights too)."""


@pytest.fixture(scope="module")
def toy_prompts(tmp_path_factory):
    """The online objectives' data: toy prompts (their reward, the toy reward, reads the colour)."""
    from diffalign.testing import write_prompt_dataset

    return write_prompt_dataset(tmp_path_factory.mktemp("prompts") / "prompts",
                                ["a red circle", "a blue square", "a green circle", "a yellow square"])


# Slow: the online objectives (the default suite has their SIGTERM test), and the objectives whose
# step and state another default case already resumes (rank_dpo, dcpo, mapo, sft: Diffusion-DPO's
# denoising step, which keeps no state of its own; smpo: InPO's inversion step) — suite budget.
_SLOW_RESUME = {"rank_dpo", "dcpo", "mapo", "sft", "smpo"}


@pytest.mark.parametrize("objective", [pytest.param(o, marks=pytest.mark.slow)
                                       if OBJECTIVES[o].min_group_size == 0 or o in _SLOW_RESUME else o
                                       for o in sorted(OBJECTIVES)])
def test_a_run_killed_at_any_phase_resumes_to_the_uninterrupted_run(objective, tiny_path, pair_data, ranked_data,
                                                                    expert_data, step_aware_model, toy_prompts,
                                                                    tmp_path):
    data = {"rank_dpo": ranked_data, "diffusion_dro": expert_data, "sft": expert_data, "grpo": toy_prompts,
            "dance_grpo": toy_prompts, "diffusion_nft": toy_prompts}.get(objective, pair_data)
    straight = tmp_path / "straight"
    assert main(_args(objective, tiny_path, data, straight, step_aware_model)) == 0
    want_weights = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    want_losses = _losses(straight)
    for phase in PHASES:
        killed = tmp_path / f"killed-{phase}"
        killed.mkdir()
        shutil.copy(straight / "config.yaml", killed)
        # The log as the killed run left it: its lines up to the checkpoint and one step beyond.
        (killed / "metrics.jsonl").write_text("".join((straight / "metrics.jsonl").read_text().splitlines(True)[:phase + 1]))
        shutil.copytree(checkpoint.path_for(straight / "checkpoints", phase),
                        checkpoint.path_for(killed / "checkpoints", phase))
        assert main(_args(objective, tiny_path, data, killed, step_aware_model, "resume=latest")) == 0
        weights = load_file(str(killed / "lora" / "pytorch_lora_weights.safetensors"))
        assert weights.keys() == want_weights.keys()
        assert all(torch.equal(weights[k], want_weights[k]) for k in weights), (objective, phase)
        assert _losses(killed) == want_losses, (objective, phase)
        # The step state at the last checkpoint too (Diffusion-DRO's snapshot, the online objectives'
        # collection on this one process; the others keep none).
        for name in (checkpoint.STEP_STATE, checkpoint.STEP_STATE_OF.format(0)):
            a = checkpoint.path_for(straight / "checkpoints", STEPS) / name
            b = checkpoint.path_for(killed / "checkpoints", STEPS) / name
            shared = OBJECTIVES[objective].min_group_size > 0
            assert a.exists() == b.exists() == (objective in CARRIES_STATE and shared == (name == checkpoint.STEP_STATE))
            if a.exists():
                sa, sb = load_file(str(a)), load_file(str(b))
                assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _corrupt(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "truncate":
        file.write_bytes(data[: len(data) // 2])
    else:  # the same size, other bytes: only the checksum can tell
        file.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))


def test_resume_latest_takes_the_newest_checkpoint_that_verifies(tiny_path, pair_data, tmp_path, capsys):
    run = lambda out, *extra: main(_args("diffusion_dpo", tiny_path, pair_data, out, None, *extra))  # noqa: E731
    straight = tmp_path / "straight"
    assert run(straight) == 0
    out = tmp_path / "run"
    assert run(out, "max_steps=4") == 0
    ckpts = out / "checkpoints"
    shutil.rmtree(out / "lora")  # as a run killed after its fourth checkpoint leaves it
    _corrupt(checkpoint.path_for(ckpts, 4) / "model.safetensors", "truncate")
    _corrupt(checkpoint.path_for(ckpts, 3) / "optimizer.bin", "flip")
    (checkpoint.path_for(ckpts, 2) / checkpoint.STATE).write_text('{"step": 2, "batc')
    capsys.readouterr()
    assert run(out, "resume=latest") == 0
    said = capsys.readouterr().out
    assert "skipping checkpoint-0000004: model.safetensors has" in said and "truncated" in said
    assert "skipping checkpoint-0000003: optimizer.bin does not match the checksum" in said
    assert "skipping checkpoint-0000002: trainer_state.json is unreadable" in said
    assert "resumed from" in said and "checkpoint-0000001 at step 1" in said
    want = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
    got = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("damage", ["model", "optimizer", "trainer_state", "rng", "missing"])
def test_a_corrupt_checkpoint_named_by_resume_is_one_clear_error(damage, tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args("diffusion_dpo", tiny_path, pair_data, out, None, "max_steps=2")) == 0
    target = checkpoint.path_for(out / "checkpoints", 2)
    file = {"model": "model.safetensors", "optimizer": "optimizer.bin", "trainer_state": checkpoint.STATE,
            "rng": "random_states_0.pkl", "missing": "scheduler.bin"}[damage]
    if damage == "missing":
        (target / file).unlink()
    else:
        _corrupt(target / file, "truncate")
    capsys.readouterr()
    status = main(_args("diffusion_dpo", tiny_path, pair_data, out, None, "max_steps=3", f"resume={target}"))
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: resume: ") and "Traceback" not in err, err
    assert file in err and len(err.strip().splitlines()) == 1, err


def test_resume_latest_when_no_checkpoint_verifies_refuses_to_start_over(tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args("diffusion_dpo", tiny_path, pair_data, out, None, "max_steps=2")) == 0
    shutil.rmtree(out / "lora")
    for step in (1, 2):
        _corrupt(checkpoint.path_for(out / "checkpoints", step) / "model.safetensors", "flip")
    capsys.readouterr()
    assert main(_args("diffusion_dpo", tiny_path, pair_data, out, None, "max_steps=3", "resume=latest")) == 1
    err = capsys.readouterr().err
    assert "none of the 2 checkpoints" in err and "overwrite=true" in err and "Traceback" not in err


@pytest.mark.parametrize("resume", ["does/not/exist", "{out}", "{out}/checkpoints"])
def test_check_config_refuses_a_resume_path_that_is_no_checkpoint(resume, tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args("diffusion_dpo", tiny_path, pair_data, out, None, "max_steps=1")) == 0
    args = _args("diffusion_dpo", tiny_path, pair_data, out, None, f"resume={resume.format(out=out)}")
    capsys.readouterr()
    assert main(["check-config", *args[2:]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: resume: ") and "cannot be resumed from" in err and "Traceback" not in err
