"""Every YAML under training/ loads and validates; each training config opens with its launch command."""

from pathlib import Path

import pytest
import yaml

from diffalign.config import TrainConfig, load_config
from diffalign.objectives import OBJECTIVES, build_objective

ROOT = Path(__file__).resolve().parents[2] / "training"
TRAIN_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_is_a_config_per_family_and_objective():
    names = {(p.parent.name, p.stem) for p in TRAIN_CONFIGS}
    for family in ("sd15", "sdxl", "sd3", "tiny"):
        for objective in OBJECTIVES:
            assert (family, objective) in names, f"training/configs/{family}/{objective}.yaml is missing"


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_training_config_validates(path, tmp_path):
    assert path.read_text().startswith("# Launch:"), "each config starts with its launch command"
    overrides = [f"data.path={tmp_path}"]
    if path.parent.name == "tiny":
        overrides.append(f"model.path={tmp_path}")
    config = load_config(path, overrides)
    assert isinstance(config, TrainConfig)
    objective = build_objective(config.objective)
    assert objective.name == path.stem
    assert path.parent.name in config.output_dir or path.parent.name == "tiny"


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP")
    assert config["mixed_precision"] in ("no", "fp16", "bf16")
