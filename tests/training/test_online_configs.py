"""The online RL configs (grpo, dance_grpo, diffusion_nft): each shipped config for a real model trains 3 updates on
its family's tiny pipeline with only its sizes shrunk, and `check-config` refuses a bad online
block exactly as `train` does, before any model loads."""

from pathlib import Path

import pytest

from diffalign.cli import main
from diffalign.testing import TINY_FRAMES, write_prompt_dataset

ROOT = Path(__file__).resolve().parents[2] / "training" / "configs"
ONLINE_NAMES = ("grpo", "dance_grpo", "diffusion_nft")
ONLINE = sorted(p for p in ROOT.rglob("*.yaml") if p.stem in ONLINE_NAMES and p.parent.name != "tiny")


def _family(path: Path) -> str:
    """The family folder a config lives under (``sd35`` for ``sd35/multi_reward/diffusion_nft.yaml``)."""
    return path.relative_to(ROOT).parts[0]
TINY_GRPO = ROOT / "tiny" / "grpo.yaml"
TOY_REWARD = '[{name: "diffalign.toy.reward:ToyReward"}]'


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_prompt_dataset(tmp_path_factory.mktemp("prompts") / "prompts",
                                ["a red circle", "a blue square", "a green circle"])


@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    """A video run's reward: the tiny PickScore, averaged over the clip's frames."""
    from diffalign.rewards.tiny import save_tiny_reward

    path, options = save_tiny_reward("pickscore", tmp_path_factory.mktemp("pickscore"))
    assert not options
    return path


def test_every_real_family_has_each_online_config():
    assert {(_family(p), p.stem) for p in ONLINE} == {(f, o) for f in ("sd15", "sdxl", "sd35", "flux", "flux2", "qwen_image", "wan", "wan22")
                                                      for o in ONLINE_NAMES}
    assert (ROOT / "sd35" / "multi_reward" / "diffusion_nft.yaml") in ONLINE  # the paper's multi-reward run
    assert {ROOT / "sd35" / "fast" / "grpo.yaml", ROOT / "sd35" / "mixgrpo" / "dance_grpo.yaml"} <= set(ONLINE)  # the windows


DEFAULT_SUITE = {"sd35/grpo", "sd35/dance_grpo", "sd35/diffusion_nft"}
"""Three of the twenty-seven in the default suite (each objective once; the UNet's online configs train in
``tests/toy/test_starter.py``, the tiny ones); the others with ``-m slow`` (the suite's time budget)."""


@pytest.mark.parametrize("path", [p if str(p.relative_to(ROOT).with_suffix("")) in DEFAULT_SUITE else
                                  pytest.param(p, marks=pytest.mark.slow) for p in ONLINE],
                         ids=lambda p: str(p.relative_to(ROOT).with_suffix("")))
def test_each_online_config_trains_three_updates_on_its_tiny_family(path, tiny_path, prompts, tiny_pickscore, tmp_path,
                                                                     capsys):
    """As shipped but for the sizes (tiny pipeline, 32 px, 3 steps, 2 images per prompt), the
    toy reward (a video: the tiny PickScore over its frames; no reward weights offline), fp32 on the CPU."""
    kind = {"wan22": "wan22_ti2v"}.get(_family(path), _family(path))  # wan22/'s online configs are TI2V-5B's
    overrides = [f"model.path={tiny_path(kind)}", f"data.path={prompts}", "data.resolution=32",
                 "rollout.steps=3", "rollout.images_per_prompt=2", "rollout.micro_batch=1",
                 "rollout.updates_per_collection=1", f"rollout.rewards={TOY_REWARD}", "mixed_precision='no'",
                 "gradient_checkpointing=false", "batch_size=1", "max_steps=3", "checkpoint_every=0", "resume=null",
                 "lora.rank=4", "validation.every=0", "logging.report_to=none", f"output_dir={tmp_path / 'run'}"]
    if "sde_window" in path.read_text():  # a window that fits the 3 steps
        overrides += ["rollout.sde_window=1", "rollout.sde_window_range=null"]
    if kind.startswith("wan"):
        overrides += [f"data.frames={TINY_FRAMES}", "rollout.width=32",
                      f"rollout.rewards=[{{name: pickscore, path: {tiny_pickscore}, frames: all}}]"]
    assert main(["train", "--config", str(path), *overrides]) == 0, capsys.readouterr().err
    assert "trained 3 steps" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    (["rollout.noise=flow_sde"], "rollout.noise: flow_sde is a rectified-flow step, and this family predicts ε or v"),
    (["rollout.images_per_prompt=1"], "images_per_prompt must be an integer ≥ 2"),
    (["rollout.rewards=[{name: pickscor}]"], "pickscor"),
    (["rollout.rewards=[]"], "rewards must be a non-empty list"),
    (["objective.clip_range=2"], "clip_range must be in (0, 1)"),
    (["objective.advantage_std=batch"], "advantage_std"),
    (["rollout.train_fraction=0.1"], "leave at least one trained step of 4"),
    (["rollout.sde_window=3", "rollout.sde_window_range=2"], "need sde_window ≤ sde_window_range ≤ steps"),
    (["rollout.sde_window_shift_every=5"], "sde_window_shift_every moves the SDE window: set rollout.sde_window too"),
    (["rollout.sample_batch=0"], "sample_batch must be an integer ≥ 1"),
    (["rollout.ode=heun"], "rollout.ode: expected one of 'ddim', 'dpm2'"),
    (["rollout.updates_per_collection=100"], "updates_per_collection 100 exceeds the micro-batches of a one-prompt "
                                              "collection (3: ⌈images_per_prompt/micro_batch⌉ × trained steps"),
])
def test_check_config_refuses_a_bad_online_block(overrides, message, tiny_path, prompts, tmp_path, capsys,
                                                 monkeypatch):
    import diffalign.families

    common = [f"model.path={tiny_path('sd15')}", f"data.path={prompts}", f"output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(diffalign.families, "load", lambda *a, **k: pytest.fail("a model loaded before the checks"))
    capsys.readouterr()
    checked, check_err = main(["check-config", str(TINY_GRPO), *common, *overrides]), capsys.readouterr().err
    trained, train_err = main(["train", "--config", str(TINY_GRPO), *common, *overrides]), capsys.readouterr().err
    assert checked == trained == 1 and check_err == train_err
    assert message in check_err and check_err.startswith("error: ") and "Traceback" not in check_err
    assert not (tmp_path / "run").exists()
