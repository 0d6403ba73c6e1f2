"""Typed configs: YAML + dotted overrides, and one clear error per problem."""

import pytest

from diffalign.config import (
    ConfigError, DataConfig, LoRAConfig, ModelConfig, TrainConfig, from_dict, load_config, save_config,
)


@pytest.fixture
def config_file(tmp_path):
    data = tmp_path / "prefs"
    data.mkdir()

    def write(text: str):
        path = tmp_path / "run.yaml"
        path.write_text(text.replace("DATA", str(data)))
        return path

    return write


GOOD = """
model:
  path: stabilityai/stable-diffusion-xl-base-1.0
  loss_weighting: min_snr
data:
  path: DATA
  resolution: 1024
optim:
  lr: 1e-8          # YAML 1.1 reads this as a string; the float field still takes it
lora:
  rank: 16
objective:
  name: diffusion_dpo
  beta: 5000
"""


def test_load_with_defaults(config_file):
    cfg = load_config(config_file(GOOD))
    assert isinstance(cfg, TrainConfig)
    assert cfg.model.path == "stabilityai/stable-diffusion-xl-base-1.0" and cfg.model.family is None
    assert cfg.optim.lr == 1e-8 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.999)
    assert cfg.lora == LoRAConfig(rank=16)
    assert cfg.data.resolution == 1024 and cfg.data.center_crop is True
    # The objective block comes back with that objective's defaults filled in.
    assert cfg.objective == {"name": "diffusion_dpo", "beta": 5000.0, "loss_type": "sigmoid"}


def test_a_misspelt_objective_key_is_named_with_the_accepted_ones(config_file):
    with pytest.raises(ConfigError) as err:
        load_config(config_file(GOOD), ["objective.betta=1"])
    message = str(err.value)
    assert "objective.betta: unknown key (did you mean 'objective.beta'?)" in message
    assert "diffusion_dpo accepts: beta (float, default 5000.0), loss_type" in message
    assert "override 'objective.betta=1'" in message
    with pytest.raises(ConfigError, match=r"objective.name: unknown objective 'inpoo' \(did you mean 'inpo'\?\)"):
        load_config(config_file(GOOD), ["objective={name: inpoo}"])
    with pytest.raises(ConfigError, match="beta must be positive"):
        load_config(config_file(GOOD), ["objective.beta=-1"])


def test_a_partial_step_block_keeps_that_objectives_defaults(config_file):
    """``inversion: {steps: 3}`` changes the steps only: SmPO keeps its own ReNoise default (1),
    not the inversion class's (0); a block another step owns is refused, naming the right one."""
    cfg = load_config(config_file(GOOD), ["objective={name: smpo}", "inversion={steps: 3}"])
    assert cfg.inversion == {"steps": 3, "landing": "official", "renoise_iters": 1, "renoise_at": "start", "eta": 0.0,
                             "guidance": 1.0, "model": "policy"}
    assert cfg.rollout is None and "inversion" not in cfg.objective
    with pytest.raises(ConfigError, match=r"inversion.stepz: unknown key \(did you mean 'inversion.steps'\?\)"):
        load_config(config_file(GOOD), ["objective={name: smpo}", "inversion={stepz: 3}"])
    with pytest.raises(ConfigError, match=r"rollout: smpo \(its inversion step\) takes no rollout block; its "
                                          r"settings go in inversion:"):
        load_config(config_file(GOOD), ["objective={name: smpo}", "rollout={steps: 3}"])
    with pytest.raises(ConfigError, match=r"inversion: diffusion_dpo \(its denoising step\) takes no inversion block"):
        load_config(config_file(GOOD), ["inversion={steps: 3}"])
    with pytest.raises(ConfigError, match=r"rollout: spo: need 1 ≤ branch_from < steps.*rollout accepts: steps"):
        load_config(config_file(GOOD), ["objective={name: spo}", "rollout={steps: 3, branch_from: 3}"])


def test_step_settings_under_objective_still_work_and_name_the_new_key(config_file):
    """Written where they were before 0.1 (``objective.inversion``, ``objective.steps``), step
    settings move to the step's block with a FutureWarning that names the new key; a key also
    written in the new block keeps the new block's value."""
    with pytest.warns(FutureWarning, match=r"objective.inversion is now inversion \(the inversion step's settings"):
        cfg = load_config(config_file(GOOD), ["objective={name: smpo, inversion: {steps: 3}}"])
    assert cfg.inversion["steps"] == 3 and cfg.inversion["renoise_iters"] == 1 and "inversion" not in cfg.objective
    with pytest.warns(FutureWarning, match=r"objective.steps is now rollout.steps; objective.branch_from is now "
                                           r"rollout.branch_from.*stop working in diffalign 0.2"):
        cfg = load_config(config_file(GOOD), ["objective={name: spo, steps: 8, branch_from: 2, beta: 5}",
                                              "rollout={branch_from: 3}"])
    assert cfg.objective == {"name": "spo", "beta": 5.0, "clip": 0.1}
    assert (cfg.rollout["steps"], cfg.rollout["branch_from"]) == (8, 3)


def test_dotted_overrides(config_file):
    cfg = load_config(
        config_file(GOOD),
        ["optim.lr=1e-5", "lora.target_modules=[to_q,to_v]", "model.family=sdxl", "objective.beta=2500", "seed=7"],
    )
    assert cfg.optim.lr == 1e-5
    assert cfg.lora.target_modules == ["to_q", "to_v"]
    assert cfg.model.family == "sdxl" and cfg.objective["beta"] == 2500 and cfg.seed == 7
    assert load_config(config_file(GOOD), ["lora=null"]).lora is None


def test_unknown_key_names_key_file_and_suggestion(config_file):
    path = config_file(GOOD.replace("  rank: 16", "  rnak: 16"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "lora.rnak: unknown key (did you mean 'lora.rank'?)" in message
    assert str(path) in message


def test_wrong_types_are_all_reported(config_file):
    path = config_file(GOOD.replace("resolution: 1024", "resolution: big").replace("rank: 16", "rank: 1.5"))
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.dtype=fp64"])
    message = str(err.value)
    assert "data.resolution: expected an integer, got 'big' (str)" in message
    assert "lora.rank: expected an integer, got 1.5 (float)" in message
    assert "model.dtype: expected one of 'fp32', 'bf16', 'fp16', got 'fp64' (from override 'model.dtype=fp64')" in message


def test_bad_override_value_names_the_override(config_file):
    with pytest.raises(ConfigError, match=r"optim.lr: expected a number, got 'fast' \(str\) \(from override 'optim.lr=fast'\)"):
        load_config(config_file(GOOD), ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(config_file(GOOD), ["optim.lr"])


def test_missing_paths_and_keys(config_file, tmp_path):
    path = config_file(GOOD.replace("path: DATA", f"path: {tmp_path}/nowhere"))
    with pytest.raises(ConfigError, match=r"data.path: path '.*nowhere' does not exist"):
        load_config(path)
    local_model = GOOD.replace("path: stabilityai/stable-diffusion-xl-base-1.0", "path: ./no/such/model")
    with pytest.raises(ConfigError, match=r"model.path: path './no/such/model' does not exist \(relative to"):
        load_config(config_file(local_model))
    with pytest.raises(ConfigError, match="model: missing required key"):
        from_dict(TrainConfig, {"data": {"path": str(tmp_path)}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_tuple_length_and_mapping_checks(config_file):
    with pytest.raises(ConfigError, match="optim.betas: expected 2 items, got 3"):
        load_config(config_file(GOOD), ["optim.betas=[0.9,0.99,0.5]"])
    with pytest.raises(ConfigError, match="optim: expected a mapping of OptimConfig keys"):
        load_config(config_file(GOOD), ["optim=3"])


def test_save_and_reload_round_trip(config_file, tmp_path):
    cfg = load_config(config_file(GOOD), ["lora.alpha=4"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_model_options_reach_the_family(tiny_path):
    from diffalign.families import load

    model = ModelConfig(path=str(tiny_path("sd15")), loss_weighting="min_snr", snr_gamma=3.0, time_sampling="logit_normal")
    family = load(model.path, **model.family_options())
    assert (family.loss_weighting, family.snr_gamma, family.time_sampling) == ("min_snr", 3.0, "logit_normal")
    # The SD3-only keys left at their defaults are dropped for an SD model...
    sd3_only = ModelConfig(path=str(tiny_path("sd3")), use_t5=False, max_sequence_length=16)
    assert load(sd3_only.path, **sd3_only.family_options()).pipe.text_encoder_3 is None


def test_data_config_requires_existing_folder(tmp_path):
    assert from_dict(DataConfig, {"path": str(tmp_path)}).resolution == 512
