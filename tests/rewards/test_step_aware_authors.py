"""The SPM authors' released checkpoints (diffalign.rewards.step_aware_authors): the file of each
release, the old keys that still answer with a warning, and the key map between their names and
ours. Loading a checkpoint through it: test_step_aware.py."""

import warnings

import pytest
import torch

from diffalign.rewards.step_aware_authors import AUTHORS_FILES, authors_release, authors_to_ours, ours_to_authors
from diffalign.rewards.tiny import save_tiny_step_aware_authors_layout


def test_each_release_is_named_after_its_file():
    assert dict(AUTHORS_FILES) == {"v1-5": "sd-v1-5_step-aware_preference_model.bin",
                                   "xl": "sdxl_step-aware_preference_model.bin"}
    for release, file in AUTHORS_FILES.items():
        assert release in file.split("_")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current name warns of nothing
        assert authors_release("xl") == "xl"


@pytest.mark.parametrize("old, new", [("sd15", "v1-5"), ("sdxl", "xl")])
def test_the_old_keys_still_answer_for_one_release_and_name_the_new_one(old, new):
    with pytest.warns(DeprecationWarning, match=f"{old!r} is now called {new!r}"):
        assert authors_release(old) == new
    with pytest.warns(DeprecationWarning, match=f"{old!r} is now called {new!r}"):
        assert AUTHORS_FILES[old] == AUTHORS_FILES[new]
    assert old not in AUTHORS_FILES and list(AUTHORS_FILES) == ["v1-5", "xl"]  # only the new names are listed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert authors_release(old, warn=False) == new


def test_an_unknown_release_is_refused():
    with pytest.raises(ValueError, match="release must be one of v1-5, xl, got 'v2'"):
        authors_release("v2")
    with pytest.raises(KeyError):
        AUTHORS_FILES["v2"]


def test_the_key_map_names_and_round_trip(tmp_path):
    checkpoint, _ = save_tiny_step_aware_authors_layout(tmp_path)
    theirs = torch.load(checkpoint, weights_only=True)
    ours = authors_to_ours(theirs)
    for key, mapped in {
        "model.t_embedder.mlp.0.weight": "time.embedder.linear_1.weight",
        "model.t_embedder.mlp.2.bias": "time.embedder.linear_2.bias",
        "model.vision_model.encoder.layers.1.adaLN_modulation.1.weight": "time.layers.1.weight",
        "model.vision_model.adaLN_modulation.1.bias": "time.pooled.bias",
        "model.vision_model.encoder.layers.0.self_attn.q_proj.weight": "clip.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "model.logit_scale": "clip.logit_scale",
    }.items():
        assert torch.equal(ours[mapped], theirs[key])
    assert not any("position_ids" in key for key in ours)  # old transformers' buffers are dropped
    back = ours_to_authors(ours)
    assert set(back) == {k for k in theirs if not k.endswith("position_ids")}
    assert all(torch.equal(back[k], theirs[k]) for k in back)
