"""Training with the policy reusing its LoRA-disabled reference's shared calls
(diffalign.families.shared_prefix) gives the losses and weights of computing everything twice."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.families.reference import Reference
from diffalign.families.shared_prefix import SharedPrefix

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "diffusion_dpo.yaml"


def _args(tiny_path, kind, data, out, *extra):
    return ["train", "--config", str(CONFIG), f"model.path={tiny_path(kind)}", f"data.path={data}",
            f"output_dir={out}", "max_steps=3", "logging.progress_bar=false", "objective.beta=500",
            "data.cache=false", "reference_pass=false", "batch_size=2", *extra]


@pytest.mark.slow  # the default suite checks the mechanism on the tiny UNet (tests/families/test_shared_prefix.py)
@pytest.mark.parametrize("kind", ["sd15", pytest.param("sdxl", marks=pytest.mark.slow),
                                  pytest.param("sd3", marks=pytest.mark.slow)])
def test_training_with_the_shared_prefix_equals_computing_it_twice(kind, tiny_path, plain_pair_data, tmp_path,
                                                                    monkeypatch):
    reused = []
    pair = SharedPrefix.pair

    def watched(self):
        reused.append(self.calls_reused)
        return pair(self)

    monkeypatch.setattr(SharedPrefix, "pair", watched)
    runs = {}
    for share in (False, True):
        monkeypatch.setattr(Reference, "share_prefix", share)
        out = tmp_path / f"share-{share}"
        assert main(_args(tiny_path, kind, plain_pair_data, out)) == 0
        runs[share] = ([json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()],
                       load_file(str(out / "lora/pytorch_lora_weights.safetensors")))
    assert reused[0] == 0 and reused[-1] > 0  # the first pair plans, the later ones reuse
    (loss_a, weights_a), (loss_b, weights_b) = runs[False], runs[True]
    assert loss_a == loss_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.slow
def test_grpo_with_a_kl_term_shares_the_prefix_and_changes_nothing(tiny_path, tmp_path, monkeypatch):
    """The online step's reference (β > 0, the KL term) runs before the policy on the same step."""
    from diffalign.testing import write_prompt_dataset

    data = write_prompt_dataset(tmp_path / "prompts", ["a red circle", "a blue square", "a green circle", "a cat"])
    config = CONFIG.parent / "grpo.yaml"
    reused = []
    pair = SharedPrefix.pair
    monkeypatch.setattr(SharedPrefix, "pair", lambda self: reused.append(self.calls_reused) or pair(self))
    runs = {}
    for share in (False, True):
        monkeypatch.setattr(Reference, "share_prefix", share)
        out = tmp_path / f"share-{share}"
        assert main(["train", "--config", str(config), f"model.path={tiny_path('sd15')}", f"data.path={data}",
                     f"output_dir={out}", "logging.progress_bar=false", "max_steps=2", "objective.beta=0.01"]) == 0
        runs[share] = ([json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()],
                       load_file(str(out / "lora/pytorch_lora_weights.safetensors")))
    assert reused and reused[-1] > 0
    assert runs[False][0] == runs[True][0]
    assert all(torch.equal(runs[False][1][k], runs[True][1][k]) for k in runs[False][1])
