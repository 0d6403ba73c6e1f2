"""Prompt dropout (``prompt_dropout``): InPO's and SmPO's official 20 % of groups trained on the
empty prompt, each group's draw from its own seed."""

import pytest
import torch

from diffalign.config import DataConfig, ModelConfig, TrainConfig
from diffalign.objectives import DiffusionDPO, InPO, SmPO
from diffalign.step_settings import prompt_dropout
from diffalign.steps import DenoisingStep, group_generators


def test_each_group_draws_from_its_own_seed(setting):
    family, reference, _ = setting
    step = DenoisingStep(family, DiffusionDPO(), reference, 2, prompt_dropout=0.2)
    drops = step.dropped_prompts(group_generators(0, 0, list(range(4000))), 4000)
    assert 0.18 < sum(drops) / 4000 < 0.22  # 0.2 within 3.5 binomial standard deviations (0.0063)
    # A group's draw does not depend on its batch: groups 10..19 alone draw what they drew among all.
    assert step.dropped_prompts(group_generators(0, 0, list(range(10, 20))), 10) == drops[10:20]
    # Another epoch draws again.
    assert step.dropped_prompts(group_generators(0, 1, list(range(4000))), 4000) != drops


def test_the_draw_leaves_the_group_generators_alone(setting):
    family, reference, _ = setting
    step = DenoisingStep(family, DiffusionDPO(), reference, 2, prompt_dropout=0.5)
    gens = group_generators(3, 0, [0, 1, 2])
    step.dropped_prompts(gens, 3)
    fresh = group_generators(3, 0, [0, 1, 2])
    assert all(torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=f)) for g, f in zip(gens, fresh))


def test_dropped_groups_are_conditioned_on_the_empty_prompt(setting):
    family, reference, batch = setting
    gens = lambda: group_generators(0, 0, batch["indices"])  # noqa: E731
    kept = DenoisingStep(family, DiffusionDPO(), reference, 2).inputs(batch, gens())[1]
    gone = DenoisingStep(family, DiffusionDPO(), reference, 2, prompt_dropout=0.999).inputs(batch, gens())[1]
    empty = family.encode_prompts([""] * len(batch["prompts"]), group_size=2)
    torch.testing.assert_close(gone.prompt_embeds, empty.prompt_embeds)
    assert not torch.allclose(kept.prompt_embeds, empty.prompt_embeds)


def test_a_cached_batch_takes_the_empty_prompts_embedding(setting):
    """Cached batches carry embeddings, not texts: the dropped groups' become the empty prompt's
    given at construction, the others stay; without it the step says what is missing."""
    family, reference, batch = setting
    b = len(batch["prompts"])
    stored = family.encode_prompts(batch["prompts"], group_size=2)
    latent = family.encode_posterior(batch["pixels"].flatten(0, 1))
    # A cache stores one embedding per row's prompt, [B, L, D] (SD1.5 has no pooled embedding).
    cached = {**batch, "latent_mean": latent[0].unflatten(0, (b, 2)), "latent_std": latent[1].unflatten(0, (b, 2)),
              "prompt_embeds": stored.prompt_embeds[:, 0]}
    empty = family.encode_prompts([""], group_size=1)
    step = DenoisingStep(family, DiffusionDPO(), reference, 2, prompt_dropout=0.5, empty_prompt=empty)
    gens = group_generators(0, 0, batch["indices"])
    drop = step.dropped_prompts(group_generators(0, 0, batch["indices"]), b)
    assert sorted(drop) == [False, True]  # this batch has a dropped and a kept group
    cond = step.inputs(cached, gens)[1]
    for group, gone in enumerate(drop):
        expected = empty.prompt_embeds[0] if gone else stored.prompt_embeds[group]
        torch.testing.assert_close(cond.prompt_embeds[group], expected.expand_as(cond.prompt_embeds[group]))
    with pytest.raises(ValueError, match="empty prompt"):
        DenoisingStep(family, DiffusionDPO(), reference, 2, prompt_dropout=0.999).inputs(cached, gens)


@pytest.mark.parametrize("objective, configured, expected", [
    (InPO(), None, 0.2), (SmPO(), None, 0.2), (DiffusionDPO(), None, 0.0), (InPO(), 0.0, 0.0), (DiffusionDPO(), 0.2, 0.2),
])
def test_the_default_is_the_objectives_official_value(objective, configured, expected, tmp_path):
    config = TrainConfig(model=ModelConfig(path=str(tmp_path)), data=DataConfig(path=str(tmp_path)),
                         prompt_dropout=configured)
    assert prompt_dropout(config, objective) == expected
