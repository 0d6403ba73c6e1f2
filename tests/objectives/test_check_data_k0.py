"""A prompt-only dataset (K = 0) given to an objective that learns from images: refused before any
model loads, naming the way out; an online objective (``min_group_size = 0``) takes any dataset."""

from dataclasses import dataclass

import pytest

from diffalign.objectives import OBJECTIVES, Objective, ObjectiveDataError

ONLINE_FREE = "train an online objective on it (dance_grpo, diffusion_nft, grpo)"
OFFLINE = sorted(name for name, cls in OBJECTIVES.items() if cls.min_group_size > 0)


def test_the_online_objectives_are_the_ones_that_take_prompts_only():
    assert sorted(set(OBJECTIVES) - set(OFFLINE)) == ["dance_grpo", "diffusion_nft", "grpo"]


@pytest.mark.parametrize("name", OFFLINE)
def test_every_existing_objective_refuses_prompts_only(name):
    with pytest.raises(ObjectiveDataError) as caught:
        OBJECTIVES[name].check_data(group_size=0, has_captions=True, has_ranks=True, has_scores=True)
    message = str(caught.value)
    assert message.startswith(f"{name} needs ")
    assert "; the dataset holds prompts only (K = 0): " in message
    assert "diffalign build synthetic DATASET --out OUT" in message


@pytest.mark.parametrize("name, message", [
    ("diffusion_dpo", ("diffusion_dpo needs K = 2 images per prompt; the dataset holds prompts only (K = 0): "
                       f"{ONLINE_FREE}, or build scored images for its prompts with `diffalign build synthetic DATASET "
                       "--out OUT --generator MODEL --reward REWARD --pairs best-worst`")),
    ("rank_dpo", ("rank_dpo needs K ≥ 3 images per prompt; the dataset holds prompts only (K = 0): "
                  f"{ONLINE_FREE}, or build scored images for its prompts with `diffalign build synthetic DATASET "
                  "--out OUT --generator MODEL --reward REWARD`")),
    ("diffusion_dro", ("diffusion_dro needs one image per prompt (K = 1); the dataset holds prompts only (K = 0): "
                       f"{ONLINE_FREE}, or generate images for its prompts (`diffalign build synthetic DATASET --out OUT "
                       "...`) and take the best of each (`diffalign build experts --from OUT --out EXPERTS`)")),
])
def test_the_whole_message(name, message):
    with pytest.raises(ObjectiveDataError) as caught:
        OBJECTIVES[name].check_data(group_size=0, has_captions=False, has_ranks=False)
    assert str(caught.value) == message


@dataclass
class _NoConfig:
    pass


class _Online(Objective):
    """What an online objective declares: prompts only, or images of any number (it ignores them)."""

    name = "online_dummy"
    Config = _NoConfig
    min_group_size = 0
    max_group_size = None


def test_an_online_objective_accepts_any_dataset():
    for k in (0, 1, 2, 7):
        _Online.check_data(group_size=k, has_captions=False, has_ranks=False, has_scores=False)


def test_a_registered_online_objective_is_named_in_the_message(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "online_dummy", _Online)
    with pytest.raises(ObjectiveDataError, match=r"\(K = 0\): train an online objective on it \(dance_grpo, diffusion_nft, grpo, "
                                                 r"online_dummy\), or "):
        OBJECTIVES["mapo"].check_data(group_size=0, has_captions=False, has_ranks=False)


def test_train_and_check_config_refuse_a_prompt_dataset_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    import diffalign.families
    from diffalign.cli import main
    from diffalign.testing import write_prompt_dataset

    def refuse(*args, **kwargs):
        raise AssertionError("a model was looked at before the data check")

    monkeypatch.setattr(diffalign.families, "load", refuse)
    monkeypatch.setattr(diffalign.families, "detect_family", refuse)
    config = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"
    data = write_prompt_dataset(tmp_path / "prompts", ["a red cat", "a blue dog"])
    (tmp_path / "model").mkdir()
    common = [f"model.path={tmp_path / 'model'}", f"data.path={data}", f"output_dir={tmp_path / 'run'}"]
    for command in (["check-config", str(config)], ["train", "--config", str(config)]):
        capsys.readouterr()
        assert main([*command, *common]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: diffusion_dpo needs K = 2 images per prompt; the dataset holds prompts only "
                              "(K = 0): train an online objective"), err
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
