"""DiffusionNFT's step (diffalign.steps.nft): the old weights sample and predict, every image trains
at its own random trained times with fresh noise that does not depend on the batch it landed in,
the old weights' soft update after a collection, and a collection with the old weights carried
through a checkpoint. The rewards are a stub (the mean brightness of each image)."""

import pytest
import torch
from test_online_step import PROMPTS, Brightness

from diffalign.config import LoRAConfig
from diffalign.families import load
from diffalign.families.reference import Reference
from diffalign.objectives import build_objective
from diffalign.objectives.diffusion_nft import old_decay
from diffalign.step_settings import OnlineRollout
from diffalign.steps import group_generators
from diffalign.steps.nft import NFTStep
from diffalign.training.lora import add_lora


def make_step(family, lora=False, rewards=None, objective=None, **settings):
    objective = build_objective(objective or {"name": "diffusion_nft"})
    settings = {"steps": 4, "guidance": 1.0, "images_per_prompt": 4, "micro_batch": 3, "resolution": 32,
                "updates_per_collection": 2, "rewards": [{"name": "stub"}], **settings}
    reference = Reference(family.denoiser, lora=lora) if objective.needs_reference else None
    return NFTStep(family, objective, reference, 0, OnlineRollout(**settings), rewards=rewards or Brightness())


def batch(rows=(0, 1)):
    return {"prompts": [PROMPTS[r] for r in rows], "ids": [str(r) for r in rows], "indices": list(rows),
            "metas": [None] * len(rows)}


def run_all(step, family, rows=(0, 1), after_update=None):
    """Every micro-batch's terms of one collection, as the update loop calls them (``on_update``
    after each update, counted from 1)."""
    out = []
    generators = group_generators(0, 0, list(rows))
    forward = lambda item: out.append(step(family.denoiser, item, generators))  # noqa: E731
    for number, update in enumerate(step.updates([batch(rows)], forward, 1), start=1):
        for micro in update:
            micro.forward()
        step.on_update(number)
        if after_update:
            after_update(number)
    return out


@pytest.fixture
def lora_family(tiny_path):
    family = load(tiny_path("sd15"))
    add_lora(family.denoiser, LoRAConfig(rank=4, alpha=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at 0; a non-zero B lets old weights unlike the policy's predict otherwise
        for name, p in family.denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return family


def test_before_any_update_old_and_policy_predict_alike_and_every_image_trains(lora_family):
    """B = 2 × K = 4 images, 3 of the 4 sampler times each (⌊0.99·4⌋), a random 3 per image;
    every (image, time) trains once (zero advantages too: r = ½), and at the start the old weights
    are the policy's, so their x̂0 are equal; the KL to the LoRA-off reference is not 0 (B ≠ 0)."""
    step = make_step(lora_family, lora=True)
    terms = run_all(step, lora_family)
    c = step.collection
    assert c.latents.shape[0] == 1 and c.log_prob.numel() == 0  # the clean samples only
    assert c.steps.shape == (8, 3) and all(len(set(row)) == 3 for row in c.steps.tolist())
    assert len({tuple(row) for row in c.steps.tolist()}) > 1  # drawn per image
    pairs = sorted((int(i), m.position) for u in c.plan for m in u for i in m.images if m.weight)
    assert pairs == sorted((i, p) for i in range(8) for p in range(3))
    for t in terms:
        torch.testing.assert_close(t.policy_x0, t.old_x0, rtol=0, atol=1e-6)
        assert (t.kl > 0).all() and t.policy_x0.requires_grad and not t.old_x0.requires_grad
        assert t.x0.shape == t.policy_x0.shape and t.advantages.shape == (len(t.weights), 1)


def test_the_terms_of_an_image_do_not_depend_on_its_batch(tiny_path):
    """Each image's trained times and noises come from its prompt's generator and its place in the
    group: prompt 1 collected alone gives its images the x0, times and x̂0 it gets beside prompt 0
    (so two processes, each with one prompt, train what one process with both does)."""
    family = load(tiny_path("sd15"))
    both, alone = make_step(family), make_step(family)

    def by_image(step, terms, first_image):
        found = {}
        for micro, t in zip((m for u in step.collection.plan for m in u), terms):
            for row, image in enumerate(micro.images.tolist()):
                found[(image - first_image, micro.position)] = (t.x0[row], t.t[row], t.policy_x0[row])
        return found

    whole = by_image(both, run_all(both, family, rows=(0, 1)), first_image=4)
    single = by_image(alone, run_all(alone, family, rows=(1,)), first_image=0)
    torch.testing.assert_close(alone.collection.steps, both.collection.steps[4:])
    for key, (x0, t, x0_hat) in single.items():
        want = whole[key]
        torch.testing.assert_close(x0, want[0], rtol=0, atol=1e-6)
        assert t == want[1]
        torch.testing.assert_close(x0_hat, want[2], rtol=0, atol=1e-5)


def _soft_update_after_a_collection(family, decay_type: int) -> float:
    """One collection of 2 updates whose policy moves after update 1; returns the decay applied,
    having checked old = d·old + (1 − d)·θ against the old weights as they were before it."""
    step = make_step(family, lora=True, objective={"name": "diffusion_nft", "decay_type": decay_type})
    olds, lives = step.old.pairs()
    before = []

    def nudge(number):
        if number == 1:  # the policy moves; the old weights stay until the collection ends
            with torch.no_grad():
                for p in lives:
                    p.add_(0.01)
            before.extend(o.clone() for o in olds)

    run_all(step, family, after_update=nudge)
    d = old_decay(2, decay_type)
    for o, was, live in zip(olds, before, lives, strict=True):
        torch.testing.assert_close(o, d * was + (1 - d) * live.detach(), rtol=0, atol=1e-7)
    assert step.metrics()["diffusion_nft/old_decay"].item() == pytest.approx(d)
    with torch.no_grad():
        for p in lives:
            p.sub_(0.01)
    return d


def test_the_old_weights_move_softly_after_each_collection(lora_family):
    """The policy is moved before the collection ends; after the collection's last update (update
    2), old = d·old + (1 − d)·θ with d of decay_type 1 at 2 updates (0.002) and of decay_type 2 (0:
    a copy)."""
    assert _soft_update_after_a_collection(lora_family, 1) == 0.002
    assert _soft_update_after_a_collection(lora_family, 2) == 0.0


def test_a_collection_and_the_old_weights_survive_a_checkpoint(lora_family):
    """The state after the first of two updates (the old weights differ from the policy's), loaded
    into a new step, yields only the second update with the terms of an uninterrupted step."""
    def shifted(step):
        with torch.no_grad():
            for o in step.old.pairs()[0]:
                o.mul_(0.5)  # old weights unlike the policy's

    whole = make_step(lora_family, lora=True)
    whole.old.refresh()
    whole._old_set = True
    shifted(whole)
    expected = run_all(whole, lora_family)
    first = make_step(lora_family, lora=True)
    first.old.refresh()
    first._old_set = True
    shifted(first)
    generators = group_generators(0, 0, [0, 1])
    updates = first.updates([batch()], lambda item: first(lora_family.denoiser, item, generators), 1)
    for micro in next(updates):
        micro.forward()
    first.on_update(1)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert any(k.startswith("old.") for k in state) and any(k.startswith("collection.") for k in state)
    rewards = Brightness()
    resumed = make_step(lora_family, lora=True, rewards=rewards)
    resumed.load_state_dict(state)
    out = []
    for update in resumed.updates([], lambda item: out.append(resumed(lora_family.denoiser, item, None)), 1):
        for micro in update:
            micro.forward()
    assert rewards.calls == 0 and len(out) == len(expected) - len(first.collection.plan[0])
    for got, want in zip(out, expected[len(first.collection.plan[0]):]):
        torch.testing.assert_close(got.old_x0, want.old_x0, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.policy_x0, want.policy_x0, rtol=0, atol=1e-6)
    assert not torch.allclose(out[0].old_x0, out[0].policy_x0, atol=1e-4)  # the old weights came back


@pytest.mark.parametrize("settings, message", [
    ({"noise": "ddim"}, "rollout.noise and rollout.noise_level do not apply"),
    ({"sde_window": 2}, "rollout.sde_window does not apply"),
    ({"trained": "random"}, "rollout.trained does not apply"),
    ({"keep_best_worst": 1}, "rollout.keep_best_worst does not apply"),
])
def test_settings_that_do_not_apply_are_refused(settings, message):
    from diffalign.families import FAMILIES

    objective = build_objective({"name": "diffusion_nft"})
    problem = NFTStep.settings_problem(objective, OnlineRollout(**{"steps": 4, **settings}), FAMILIES["sd"])
    assert problem is not None and message in problem


def test_sampling_in_parts_gives_the_collection_of_one_batch(tiny_path):
    """``rollout.sample_batch: 1`` with the old weights sampling: the same clean samples (1e-5)
    and advantages (2e-4: they divide reward differences by their spread) as one batch."""
    family = load(tiny_path("sd3"))
    whole, parted = make_step(family), make_step(family, sample_batch=1)
    run_all(whole, family)
    run_all(parted, family)
    for name in ("latents", "steps"):
        torch.testing.assert_close(getattr(parted.collection, name), getattr(whole.collection, name),
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parted.collection.advantages, whole.collection.advantages, atol=2e-4, rtol=0)
    assert parted.rewards.calls == 2
