"""A dataset of one image per prompt (K = 1, expert images) given to an objective that compares
images: refused before any model loads, naming the objective that takes such data."""

import io
from pathlib import Path

import pytest
from PIL import Image

from diffalign.cli import main
from diffalign.data.writer import ShardWriter
from diffalign.objectives import OBJECTIVES, ObjectiveDataError

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"
PAIRWISE = sorted(name for name, cls in OBJECTIVES.items() if cls.min_group_size >= 2)


def test_every_existing_objective_compares_images():
    """The list the next test walks through is not empty, and holds the six objectives of pairs and
    groups (SFT also takes one image per prompt: SFT on experts)."""
    assert {"diffusion_dpo", "mapo", "dcpo", "rank_dpo", "inpo", "smpo"} <= set(PAIRWISE) and "sft" not in PAIRWISE


@pytest.mark.parametrize("name", PAIRWISE)
def test_k1_is_refused_naming_the_objective_that_takes_it(name):
    with pytest.raises(ObjectiveDataError) as caught:
        OBJECTIVES[name].check_data(group_size=1, has_captions=True, has_ranks=True, has_scores=True)
    message = str(caught.value)
    assert message.startswith(f"{name} needs ")
    assert "the dataset has one image per prompt (K = 1, an expert dataset)" in message
    assert "diffusion_dro is the objective that trains on one image per prompt" in message


def test_the_named_objective_takes_one_image_per_prompt_and_points_groups_to_the_builder():
    dro = OBJECTIVES["diffusion_dro"]
    dro.check_data(group_size=1, has_captions=False, has_ranks=False, has_scores=False)
    with pytest.raises(ObjectiveDataError, match=r"diffusion_dro needs one image per prompt \(K = 1\); the dataset "
                                                 r"has pairs .*`diffalign build experts --from DATASET --out OUT`"):
        dro.check_data(group_size=2, has_captions=False, has_ranks=False, has_scores=False)


@pytest.mark.parametrize("name, group_size, message", [
    ("diffusion_dpo", 3, "diffusion_dpo needs K = 2 images per prompt; the dataset has groups of K = 3 "
                         "(use rank_dpo for ranked groups, or build pairs)"),
    ("rank_dpo", 2, "rank_dpo needs K ≥ 3 images per prompt; the dataset has pairs"),
])
def test_the_messages_for_groups_are_unchanged(name, group_size, message):
    with pytest.raises(ObjectiveDataError) as caught:
        OBJECTIVES[name].check_data(group_size=group_size, has_captions=True, has_ranks=True)
    assert str(caught.value) == message


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def test_train_and_check_config_refuse_an_expert_dataset_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import diffalign.families

    def refuse(*args, **kwargs):
        raise AssertionError("a model was looked at before the data check")

    monkeypatch.setattr(diffalign.families, "load", refuse)
    monkeypatch.setattr(diffalign.families, "detect_family", refuse)
    writer = ShardWriter(tmp_path / "experts", builder="test", options={})
    for i in range(2):
        writer.add({"id": f"e{i}", "prompt": f"a red cat {i}", "images": [{"bytes": _png((200, 10 * i, 0)), "path": None}],
                    "scores": None, "ranks": None, "captions": None, "source": "test", "meta": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 1})
    (tmp_path / "model").mkdir()  # exists, holds no weights: nothing could load from it
    common = [f"model.path={tmp_path / 'model'}", f"data.path={tmp_path / 'experts'}",
              f"output_dir={tmp_path / 'run'}"]
    for command in (["check-config", str(CONFIG)], ["train", "--config", str(CONFIG)]):
        capsys.readouterr()
        assert main([*command, *common]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: diffusion_dpo needs K = 2 images per prompt; the dataset has one image per "
                              "prompt (K = 1, an expert dataset) (diffusion_dro is the objective"), err
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
