"""Online RL's step (diffalign.steps.online): ratio 1 before any update on every tiny family, the
plan a collection becomes, the zero-spread filter, the SDE window, shared noise, and a collection
carried through a checkpoint. The rewards are a stub (the mean brightness of each image)."""

import pytest
import torch

from diffalign.families import load
from diffalign.families.reference import Reference
from diffalign.objectives import build_objective
from diffalign.step_settings import OnlineRollout
from diffalign.steps import group_generators
from diffalign.steps.online import OnlineStep

PROMPTS = ["a red cat", "a blue dog"]


class Brightness:
    """A reward: each image's mean pixel (videos too), or a constant."""

    def __init__(self, constant=None):
        self.weights, self.labels, self.constant, self.calls = [1.0], ["brightness"], constant, 0

    def __call__(self, images, prompts, metadata=None, layout=None):
        self.calls += 1
        assert len(prompts) == len(images) and len(metadata) == len(images)
        scores = images.flatten(1).mean(1)
        return {"brightness": torch.full_like(scores, self.constant) if self.constant is not None else scores}


def make_step(family, objective=None, rewards=None, **settings):
    objective = build_objective(objective or {"name": "grpo", "beta": 0.01, "clip_range": 1e-3})
    settings = {"steps": 4, "guidance": 4.0, "images_per_prompt": 4, "micro_batch": 3, "resolution": 32,
                "frames": 5 if family.media == "video" else None, "rewards": [{"name": "stub"}], **settings}
    reference = Reference(family.denoiser, lora=False) if objective.needs_reference else None
    return OnlineStep(family, objective, reference, 0, OnlineRollout(**settings), rewards=rewards or Brightness())


def batch():
    return {"prompts": list(PROMPTS), "ids": ["a", "b"], "indices": [0, 1], "metas": [None, None]}


def run_all(step, family, updates=None):
    """Every micro-batch's terms of one collection, as the update loop would call them."""
    out = []
    generators = group_generators(0, 0, [0, 1])
    forward = lambda item: out.append(step(family.denoiser, item, generators))  # noqa: E731
    for update in (updates or step.updates([batch()], forward, 1)):
        for micro in update:
            micro.forward()
    return out


@pytest.mark.parametrize("kind, noise", [("sd15", "ddim"), pytest.param("sdxl", "ddim", marks=pytest.mark.slow),
                                         ("sd3", "flow_sde"), pytest.param("sd3", "cps", marks=pytest.mark.slow),
                                         pytest.param("wan", "flow_sde", marks=pytest.mark.slow)])
def test_the_ratio_is_one_and_the_kl_zero_before_any_update(kind, noise, tiny_path):
    """flow_grpo #131/#211, DanceGRPO #70: recomputed under the policy that sampled, each trained
    step's log-probability equals the one recorded at sampling (1e-6), guided as it sampled.
    SDXL, CPS and Wan with ``-m slow``; every family and rule runs in the default suite at the
    solver's level (``tests/test_noise_rules.py``)."""
    family = load(tiny_path(kind))
    step = make_step(family, noise=noise)
    terms = run_all(step, family)
    ratios = torch.cat([torch.exp(t.policy_logp - t.old_logp).flatten() for t in terms])
    torch.testing.assert_close(ratios, torch.ones_like(ratios), rtol=0, atol=1e-6)
    assert torch.cat([t.kl.flatten() for t in terms]).abs().max() < 1e-10  # the reference is the same weights
    assert all(t.policy_logp.requires_grad for t in terms)


def test_a_collection_becomes_its_updates(tiny_path):
    """B = 2 prompts × K = 4 = 8 images in micro-batches of 3: ⌈8/3⌉ = 3 image micro-batches × 3
    trained steps (⌊0.99·4⌋) = 9, split into 2 updates of 5 and 4; one collection (one rollout,
    one scoring) serves them all, and each (image, step) trains once."""
    family = load(tiny_path("sd15"))
    rewards = Brightness()
    step = make_step(family, rewards=rewards)
    seen = []
    generators = group_generators(0, 0, [0, 1])
    updates = list(step.updates([batch()], lambda item: seen.append(item["online"]) or step(family.denoiser, item,
                                                                                             generators), 1))
    assert [len(u) for u in updates] == [5, 4]
    for update in updates:
        for micro in update:
            micro.forward()
    assert rewards.calls == 1 and seen == [(1, 0, i) for i in range(5)] + [(1, 1, i) for i in range(4)]
    plan = step.collection.plan
    pairs = sorted((int(i), m.position) for u in plan for m in u for i in m.images if m.weight)
    assert pairs == sorted((i, p) for i in range(8) for p in range(3))
    assert step.collection.steps.tolist() == [[0, 1, 2]] * 8  # the last step never trains


def test_equal_rewards_train_nothing(tiny_path):
    family = load(tiny_path("sd15"))
    step = make_step(family, rewards=Brightness(constant=0.5))
    terms = run_all(step, family)
    assert all(t.weights.eq(0).all() for t in terms)  # padding only: the same backwards, no signal
    assert step.metrics()["online/zero_spread"].item() == 1.0
    loss = build_objective({"name": "grpo", "beta": 0.01, "clip_range": 1e-3}).loss(terms[0]).loss
    assert loss.item() == 0.0 and loss.requires_grad


def test_an_sde_window_samples_and_trains_only_its_steps(tiny_path):
    family = load(tiny_path("sd3"))
    step = make_step(family, steps=5, sde_window=2, sde_window_range=4)
    run_all(step, family)
    c = step.collection
    window = c.steps[0].tolist()
    assert len(window) == 2 and window[1] == window[0] + 1 and window[1] <= 3
    assert (c.steps == c.steps[:1]).all()
    stochastic = (c.log_prob != 0).any(dim=1).nonzero().flatten().tolist()
    assert stochastic == window  # deterministic (log-prob 0) outside the window


def test_mixgrpo_window_moves_from_the_noisy_steps_to_the_clean_ones():
    """MixGRPO's progressive window (grpo_states.py ``update_iteration``): the first collection
    starts at 0, the start moves ``stride`` steps every ``shift_every`` collections and stays at
    the end of the range; hand-written for 10 steps, a window of 2 in the first 8, a shift every
    3 collections of stride 2 (so the 4th collection starts at 2, the 10th would be 6, held at 6)."""
    from diffalign.steps.collect import window_start

    settings = OnlineRollout(steps=10, sde_window=2, sde_window_range=8, sde_window_shift_every=3,
                             sde_window_stride=2)
    never = torch.Generator()  # a progressive start draws nothing
    starts = [window_start(settings, never, number) for number in range(1, 14)]
    assert starts == [0, 0, 0, 2, 2, 2, 4, 4, 4, 6, 6, 6, 6]
    assert never.get_state().equal(torch.Generator().get_state())
    drawn = OnlineRollout(steps=10, sde_window=2, sde_window_range=8)  # Flow-GRPO-Fast: a draw per collection
    assert {window_start(drawn, torch.Generator().manual_seed(s), 1) for s in range(60)} == set(range(7))


def test_a_progressive_window_trains_where_it_has_moved_to(tiny_path):
    """Through the step: the run's 3rd collection (a shift every collection, stride 1) samples
    stochastically and trains on steps 2 and 3 only."""
    family = load(tiny_path("sd3"))
    step = make_step(family, steps=5, sde_window=2, sde_window_shift_every=1)
    step.collections = 2  # two collections already made: this batch is the 3rd
    run_all(step, family)
    c = step.collection
    assert c.number == 3 and (c.steps == torch.tensor([2, 3])).all()
    assert (c.log_prob != 0).any(dim=1).nonzero().flatten().tolist() == [2, 3]


def test_dance_grpo_shares_the_start_noise_and_draws_steps_per_image(tiny_path):
    family = load(tiny_path("sd3"))
    step = make_step(family, objective={"name": "dance_grpo"}, steps=6, **build_objective(
        {"name": "dance_grpo"}).step_defaults)
    assert step.reference is None
    run_all(step, family)
    c = step.collection
    start = c.latents[0].reshape(2, 4, -1)
    assert (start == start[:, :1]).all() and not torch.equal(start[0], start[1])  # one noise per prompt
    assert c.steps.shape == (8, 3)  # ⌊0.6·(6 − 1)⌋ of the first 5 steps
    assert c.steps.max() <= 4 and len({tuple(r) for r in c.steps.tolist()}) > 1


def test_a_collection_survives_a_checkpoint_between_its_updates(tiny_path):
    """The state after the first of two updates, loaded into a new step, yields only the second
    update, with the terms an uninterrupted step gives (no new rollout)."""
    family = load(tiny_path("sd15"))
    whole = make_step(family)
    expected = run_all(whole, family)
    first = make_step(family)
    updates = first.updates([batch()], lambda item: first(family.denoiser, item, group_generators(0, 0, [0, 1])), 1)
    for micro in next(updates):
        micro.forward()
    first.on_update(1)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    rewards = Brightness()
    resumed = make_step(family, rewards=rewards)
    resumed.load_state_dict(state)
    out = []
    for update in resumed.updates([], lambda item: out.append(resumed(family.denoiser, item, None)), 1):
        for micro in update:
            micro.forward()
    assert rewards.calls == 0 and len(out) == 4
    for got, want in zip(out, expected[5:]):
        torch.testing.assert_close(got.policy_logp, want.policy_logp, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.advantages, want.advantages)


def test_detach_uncond_lets_the_gradient_through_the_conditional_half_only():
    """Flow-GRPO's SD3 training (train_sd3.py L190): guided = u + w·(c − u) with u detached, so
    ∂/∂p of a prediction p·x·e (e = 3 conditional, 2 unconditional; x = 1, w = 4) is w·3 = 12;
    through both halves it is 2 + 4·(3 − 2) = 6."""
    from diffalign.solver import guided

    class Cond:
        def __init__(self, e):
            self.e = e

        def join(self, other):
            return Cond(torch.cat([self.e, other.e], dim=1))

    from diffalign.families.base import ModelFamily

    class Family:
        takes_guidance = True

        @staticmethod
        def predict(model, x, t, cond):
            return model * x * cond.e

        @staticmethod
        def combine_guidance(pred, pred_uncond, guidance):  # the families' default u + w·(c − u)
            return ModelFamily.combine_guidance(None, pred, pred_uncond, guidance)

    for detach, expected in ((True, 12.0), (False, 6.0)):
        p = torch.tensor(1.0, requires_grad=True)
        out = guided(Family, p, torch.ones(1, 1), None, Cond(torch.full((1, 1), 3.0)), Cond(torch.full((1, 1), 2.0)),
                     guidance=4.0, detach_uncond=detach)
        out.sum().backward()
        assert p.grad.item() == expected


class Background(Brightness):
    """The stub with the rewards' background thread (``OnlineRewards.submit``): counts the parts it was handed."""

    def __init__(self):
        super().__init__()
        from concurrent.futures import ThreadPoolExecutor

        self.pool, self.submitted = ThreadPoolExecutor(max_workers=1), 0

    def submit(self, images, prompts, metadata=None, layout=None):
        self.submitted += 1
        return self.pool.submit(self, images, prompts, metadata, layout)


@pytest.mark.parametrize("rewards", [Brightness, Background])
def test_sampling_a_prompt_at_a_time_collects_what_one_batch_does(tiny_path, rewards):
    """``rollout.sample_batch: 1``: each prompt sampled on its own (scored in the background while
    the next samples, where the rewards can) gives the one-batch collection: latents, log-probabilities
    (1e-5) and advantages (2e-4, the batch size of the denoiser's calls is all that differs)."""
    family = load(tiny_path("sd3"))
    whole = make_step(family, steps=3)
    run_all(whole, family)
    parted = make_step(family, steps=3, sample_batch=1, rewards=rewards())
    run_all(parted, family)
    a, b = whole.collection, parted.collection
    for name in ("latents", "log_prob", "times"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-5, rtol=1e-5)
    # An advantage divides reward differences of ~1e-2 by their spread: 1e-6 in a reward is ~1e-4 there.
    torch.testing.assert_close(b.advantages, a.advantages, atol=2e-4, rtol=0)
    assert parted.rewards.calls == 2  # one scoring per prompt
    if rewards is Background:  # handed to the background thread, not called in line
        assert parted.rewards.submitted == 2
    assert parted.totals["scoring"] > 0


def test_offloaded_rewards_come_to_the_device_only_to_score(tiny_path):
    """``rollout.offload_rewards``: a module reward is moved to the family's device before the
    scoring and back to the CPU after it, once per collection; a plugin that is no module is left alone."""
    from diffalign.rewards.online import OnlineRewards

    moves = []

    class Mean(torch.nn.Module):
        def to(self, *args, **kwargs):
            moves.append(str(args[0]))
            return super().to(*args, **kwargs)

        def score(self, images, prompts):
            moves.append("score")
            return images.flatten(1).mean(1)

    class Plain:
        def score(self, images, prompts):
            return images.flatten(1).mean(1)

    rewards = OnlineRewards([Mean(), Plain()], [1.0, 1.0], ["mean", "plain"], [64, 64])
    family = load(tiny_path("sd15"))
    step = make_step(family, steps=2, offload_rewards=True, rewards=rewards)
    run_all(step, family)
    assert moves == [str(family.device), "score", "cpu"]
