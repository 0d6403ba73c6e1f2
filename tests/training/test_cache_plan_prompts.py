"""A prompt-only dataset (K = 0) has no images to cache: ``data.cache: auto`` trains uncached and
says why, ``data.cache: true`` is refused naming the fix; nothing is built or looked for."""

from pathlib import Path

import pytest

from diffalign.config import load_config
from diffalign.data.dataset import PreferenceDataset
from diffalign.families import FAMILIES
from diffalign.objectives import build_objective
from diffalign.testing import write_prompt_dataset
from diffalign.training.checks import StartupError, plan_cache

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"
FAMILY = min(FAMILIES)  # any: the plan for prompts does not depend on the family


def _plan(tmp_path, mode):
    data = write_prompt_dataset(tmp_path / "prompts", ["a red cat", "a blue dog"])
    (tmp_path / "model").mkdir(exist_ok=True)  # exists, holds no weights: nothing could load from it
    config = load_config(CONFIG, [f"model.path={tmp_path / 'model'}", f"data.path={data}", f"data.cache={mode}",
                                  f"output_dir={tmp_path / 'run'}"])
    return plan_cache(config, FAMILY, PreferenceDataset.open(data), build_objective(config.objective))


def test_auto_trains_uncached_and_says_why(tmp_path):
    plan = _plan(tmp_path, "auto")
    assert (plan.action, plan.cached, plan.cache) == ("off", False, None)
    assert plan.reason == "the dataset holds prompts only (K = 0): it has no images to cache"
    assert not (tmp_path / "prompts" / "cache").exists()


def test_true_is_refused_naming_the_fix(tmp_path):
    with pytest.raises(StartupError) as caught:
        _plan(tmp_path, "true")
    assert str(caught.value) == ("data.cache: true, but the dataset holds prompts only (K = 0): it has no images to "
                                 "cache; train with data.cache=false (or auto)")


def test_false_stays_off(tmp_path):
    assert _plan(tmp_path, "false").reason == "data.cache is false"
