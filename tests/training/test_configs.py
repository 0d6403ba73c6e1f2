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
    for family in ("sd15", "sdxl", "sd3", "sd35", "flux", "flux2", "qwen_image", "tiny"):
        for objective in OBJECTIVES:
            if family == "sd3" and OBJECTIVES[objective].min_group_size == 0:
                continue  # the online methods' published runs are SD3.5's: training/configs/sd35/
            assert (family, objective) in names, f"training/configs/{family}/{objective}.yaml is missing"
    for video in ("wan", "wan22", "video"):  # training/configs/wan/, wan22/ and tiny/video/
        for objective in ("diffusion_dpo", "mapo"):
            assert (video, objective) in names, f"the {video} config of {objective} is missing"


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_training_config_validates(path, tmp_path):
    first, launch = path.read_text().splitlines()[:2]
    assert first.startswith("# First: ") and launch.startswith("# Launch: "), \
        "each config opens with the command that makes what it needs, then its launch command"
    assert f"--config training/configs/{path.relative_to(ROOT / 'configs')}" in launch
    overrides = [f"data.path={tmp_path}"]
    tiny = "tiny" in path.relative_to(ROOT / "configs").parts
    if tiny:
        overrides.append(f"model.path={tmp_path}")
    config = load_config(path, overrides)
    assert isinstance(config, TrainConfig)
    objective = build_objective(config.objective)
    assert objective.name == path.stem
    assert path.parent.name in config.output_dir or tiny


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED", "FSDP")
    assert config["mixed_precision"] in ("no", "fp16", "bf16")


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_first_line_is_an_existing_command_that_makes_the_data(path):
    """A fresh clone has no data (nor tiny model): the config's first line must be a real
    ``diffalign`` command line, whose output is what the config trains on."""
    import shlex

    from diffalign.cli import build_parser

    command = path.read_text().splitlines()[0].removeprefix("# First: ").split("  #")[0]
    argv = shlex.split(command)
    assert argv[0] == "diffalign"
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on an unknown command or option
    config = yaml.safe_load(path.read_text())
    if args.command == "make-tiny":
        assert config["data"]["path"].startswith(f"{args.out}/") and config["model"]["path"].startswith(f"./{args.out}/")
    elif args.command == "score":  # scores written into a copy of a dataset (SmPO's labels)
        assert args.into == Path(config["data"]["path"])
    elif getattr(args, "builder", None) == "prompts":  # prompt-only train/eval splits (online RL)
        assert config["data"]["path"] == f"{args.out}/train"
    else:
        assert args.out == config["data"]["path"]


def test_a_missing_data_path_error_repeats_the_first_line(tmp_path, monkeypatch):
    from diffalign.config import ConfigError

    monkeypatch.chdir(tmp_path)  # a fresh clone: no data/ folder
    with pytest.raises(ConfigError, match="Make what it needs first: diffalign build pick-a-pic"):
        load_config(ROOT / "configs" / "sdxl" / "diffusion_dpo.yaml")
