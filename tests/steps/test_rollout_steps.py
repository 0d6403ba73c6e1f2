"""The sampling steps: SPO's resampler keeps best and worst candidates past the threshold and its
terms are the step's Gaussian errors; Diffusion-DRO's rollout state is the snapshot's and, at a
refresh, the policy's error on it is zero."""

import math

import pytest
import torch

from diffalign.families.reference import Reference
from diffalign.objectives import SPO, DiffusionDRO
from diffalign.step_settings import DRORollout, SPORollout
from diffalign.steps import DiffusionDROStep, SPOStep, group_generators
from diffalign.steps.diffusion_dro import perturbed_grid


class Brightness(torch.nn.Module):
    """A stand-in step-aware scorer: 100 × mean brightness; records what it was asked."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def score_noisy(self, pixels, prompts, t):
        self.calls.append((pixels.shape[0], list(prompts), t.clone()))
        return 100 * pixels.mean((1, 2, 3))


def _spo_step(setting, monkeypatch, **options):
    import diffalign.steps.spo as spo_step

    family, reference, batch = setting
    scorer = Brightness()
    monkeypatch.setattr(spo_step, "load_preference_model", lambda config, device: scorer)
    settings = SPORollout(steps=4, branch_from=1, candidates=3, **options)
    return SPOStep(family, SPO(), reference, 2, settings), scorer


def test_spo_pairs_are_best_and_worst_candidates_past_the_threshold(setting, monkeypatch):
    family, reference, batch = setting
    step, scorer = _spo_step(setting, monkeypatch, threshold=0.0)
    gens = group_generators(0, 0, batch["indices"])
    pairs, cond, uncond, _ = step.rollout(family.denoiser, batch, gens)
    assert len(pairs) == 3  # branching at steps 1, 2, 3 of 4
    # Every candidate is scored: 2 prompts × 3 candidates per branching step, the last at t = 0.
    assert [n for n, _, _ in scorer.calls] == [6, 6, 6]
    assert scorer.calls[0][1] == [batch["prompts"][0]] * 3 + [batch["prompts"][1]] * 3
    assert (scorer.calls[-1][2] == 0).all() and (scorer.calls[0][2] > 0).all()
    keep, u, v, x_t, x_w, x_l = pairs[1]
    assert keep.all() and not torch.equal(x_w, x_l)  # distinct candidates, any gap passes threshold 0
    # The tiny scheduler's last step lands on ᾱ = 1 (set_alpha_to_one): σ = 0, so its k candidates
    # are one point, no pair can be told apart, and none is kept.
    keep, _, _, _, x_w, x_l = pairs[-1]
    assert torch.equal(x_w, x_l) and not keep.any()


def test_spo_terms_are_the_step_log_probabilities_and_a_high_threshold_keeps_nothing(setting, monkeypatch):
    family, reference, batch = setting
    step, _ = _spo_step(setting, monkeypatch, threshold=0.0)
    gens = group_generators(0, 0, batch["indices"])
    terms = step(family.denoiser, batch, gens)
    assert terms.policy_logp.shape == (4, 2) and terms.weights is None  # 2 prompts × 2 steps with σ > 0
    # Policy and reference are the same weights: the log-ratio is 0 and the loss is ln 2.
    torch.testing.assert_close(terms.policy_logp, terms.ref_logp)
    assert SPO().loss(terms).loss.item() == pytest.approx(math.log(2), rel=1e-6)
    # −(x' − μ)²/(2σ²) of a draw μ + σ·z averages −½ per element; the loser's too.
    assert -0.7 < terms.policy_logp.mean().item() < -0.3
    timing = step.log_values()
    assert timing["time/rollout_s"] > 0 and timing["time/train_s"] > 0 and step.log_values()["time/rollout_s"] == 0
    assert step.metrics()["spo/kept_pairs"].item() == pytest.approx(4 / 6)

    strict, _ = _spo_step(setting, monkeypatch, threshold=0.999)
    terms = strict(family.denoiser, batch, group_generators(0, 0, batch["indices"]))
    assert terms.policy_logp.shape == (1, 2) and terms.weights.tolist() == [0.0]
    assert SPO().loss(terms).loss.item() == 0.0


def test_spo_caps_pairs_per_prompt(setting, monkeypatch):
    family, reference, batch = setting
    step, _ = _spo_step(setting, monkeypatch, threshold=0.0, max_pairs_per_prompt=1)
    terms = step(family.denoiser, batch, group_generators(0, 0, batch["indices"]))
    assert terms.policy_logp.shape == (2, 2)


def test_perturbed_grid_moves_each_time_up_within_its_gap():
    grid = torch.tensor([[0.75, 0.5, 0.25, 0.0]] * 3)
    out = perturbed_grid(grid, [torch.Generator().manual_seed(i) for i in range(3)])
    before = torch.tensor([1.0, 0.75, 0.5])
    assert (out[:, :-1] >= grid[:, :-1]).all() and (out[:, :-1] < before).all() and (out[:, -1] == 0).all()
    # One draw per group: the same fraction of every gap.
    frac = (out[:, :-1] - grid[:, :-1]) / (before - grid[:, :-1])
    torch.testing.assert_close(frac, frac[:, :1].expand_as(frac))


def test_dro_rollout_state_is_the_snapshots_and_lags_after_an_update(setting):
    from peft import LoraConfig

    family, _, batch = setting
    batch = {**batch, "pixels": batch["pixels"][:, :1], "captions": [None, None]}
    denoiser = family.denoiser
    denoiser.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights="gaussian"), adapter_name="dro-test")
    try:
        reference = Reference(denoiser, lora=True)
        step = DiffusionDROStep(family, DiffusionDRO(), reference, 1, DRORollout(steps=3))
        gens = group_generators(0, 0, batch["indices"])
        terms = step(denoiser, batch, gens)
        assert terms.policy_err.shape == (2, 2)
        # At a refresh the snapshot is the policy: its error on its own prediction is 0.
        assert terms.policy_err[:, 1].abs().max() < 1e-10 and terms.ref_err[:, 1].min() > 0
        # An update moves the policy; until on_update the snapshot keeps the old weights.
        with torch.no_grad():
            for p in denoiser.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        lagging = step(denoiser, batch, group_generators(0, 0, batch["indices"]))
        assert lagging.policy_err[:, 1].min() > 0
        step.on_update(1)
        fresh = step(denoiser, batch, group_generators(0, 0, batch["indices"]))
        assert fresh.policy_err[:, 1].abs().max() < 1e-10
        # Same generators, same draws: the expert column does not depend on the snapshot.
        torch.testing.assert_close(fresh.policy_err[:, 0], lagging.policy_err[:, 0])
        assert step.preview_images().shape == (2, 3, 32, 32)
    finally:
        denoiser.delete_adapters("dro-test")


def test_a_part_timed_inside_another_counts_for_itself_only(setting, monkeypatch):
    """Scoring inside a collection's rollout: 0.2 s of scoring inside a 0.5 s rollout block logs
    0.3 s of rollout and 0.2 s of scoring (a clock that moves only when told)."""
    from diffalign.steps.rollout import PARTS, RolloutStep

    spo, _ = _spo_step(setting, monkeypatch, threshold=0.0)
    assert "time/scoring_s" not in spo.log_values()  # SPO scores nothing: no such column
    monkeypatch.setattr(RolloutStep, "parts", PARTS)  # a step that times all three, as the online ones
    step, _ = _spo_step(setting, monkeypatch, threshold=0.0)
    now = [0.0]
    monkeypatch.setattr("diffalign.steps.rollout.time.perf_counter", lambda: now[0])
    with step.timed("rollout"):
        now[0] += 0.1
        with step.timed("scoring"):
            now[0] += 0.2
        now[0] += 0.2
    timing = step.log_values()
    assert timing["time/rollout_s"] == pytest.approx(0.3) and timing["time/scoring_s"] == pytest.approx(0.2)
    assert step.totals["rollout"] == pytest.approx(0.3) and timing["time/train_s"] == 0
