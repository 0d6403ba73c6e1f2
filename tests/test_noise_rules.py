"""Online RL's noise rules (diffalign.noise_rules): Flow-GRPO's SDE step, CPS and DanceGRPO's SDE
step written out by hand at given levels, the std each one's KL divides by, and the ratio a policy gradient starts from:
before any update, the log-probability recomputed under the policy equals the one kept while
sampling, on every tiny family (fp32)."""

import math

import pytest
import torch

from diffalign.noise_rules import CPS, DanceSDE, FlowSDE
from diffalign.solver import DDIM, gaussian_log_prob, initial_noise, sampling_grid, solve, step_log_prob


class _Flow:
    """The one family fact the rules read."""

    name, prediction_type = "sd3", "flow"


def _step(rule, sigma, sigma_next, x, velocity):
    predict = lambda x_, t_: torch.full_like(x_, velocity)  # noqa: E731
    x = torch.full((1, 1, 1, 2, 2), x)
    return rule.transition(_Flow(), predict, x, torch.tensor([sigma]), torch.tensor([sigma_next]))


def test_flow_grpo_sde_step_by_hand():
    """σ = 0.6 → 0.2, a = 0.7, x = 1, v̂ = 0.5: g = 0.7·√(0.6/0.4) = 0.857321, g² = 0.735,
    std = g·√0.4 = 0.542218; mean = (1 − 0.735·0.4/1.2)·1 + 0.5·(1 + 0.735·0.4/1.2)·(−0.4)
    = 0.755 − 0.249 = 0.506."""
    _, mean, std = _step(FlowSDE(0.7), 0.6, 0.2, 1.0, 0.5)
    assert std.flatten()[0].item() == pytest.approx(0.542218, abs=1e-6)
    assert torch.allclose(mean, torch.tensor(0.506), atol=1e-6)


def test_flow_grpo_sde_first_step_from_pure_noise_uses_the_next_level():
    """At σ = 1 the official code divides by 1 − sigmas[1]: σ' = 0.8 gives g = 0.7·√5 and a step
    std of 0.7·√5·√0.2 = 0.7 exactly."""
    _, _, std = _step(FlowSDE(0.7), 1.0, 0.8, 0.0, 0.0)
    assert std.flatten()[0].item() == pytest.approx(0.7, abs=1e-6)


def test_cps_step_and_its_log_prob_by_hand():
    """σ = 0.6 → 0.2, a = 0.4, x = 1, v̂ = 0.5: std = 0.2·sin(0.2π) = 0.117557; x̂0 = 0.7,
    ε̂ = 1.2, √(0.04 − std²) = 0.161803; mean = 0.56 + 0.194164 = 0.754164; a sample 0.5 away
    from the mean has log-probability −0.25 (no 1/(2σ²), no constants, as officially)."""
    rule = CPS(0.4)
    _, mean, std = _step(rule, 0.6, 0.2, 1.0, 0.5)
    assert std.flatten()[0].item() == pytest.approx(0.2 * math.sin(0.2 * math.pi), abs=1e-7)
    assert std.flatten()[0].item() == pytest.approx(0.117557, abs=1e-6)
    assert torch.allclose(mean, torch.tensor(0.754164), atol=1e-6)
    assert rule.log_prob(mean + 0.5, mean, std).flatten().tolist() == pytest.approx([-0.25])


def _step_2(rule, sigma, sigma_next, x, velocity):
    """One step of a 2-element latent ``x`` (``[1, 1, 2]``) with velocity ``velocity`` per element."""
    predict = lambda x_, t_: torch.tensor(velocity).reshape(x_.shape)  # noqa: E731
    return rule.transition(_Flow(), predict, torch.tensor(x).reshape(1, 1, 2), torch.tensor([sigma]),
                           torch.tensor([sigma_next]))


def test_dance_sde_step_by_hand():
    """σ = 0.6 → 0.2 (Δ = −0.4), η = 0.3, x = (1, −2), v̂ = (0.5, 1): x's factor 1 + 0.09·(−0.4)/1.2
    = 0.97, v̂'s (1 + 0.09·0.4/1.2)·(−0.4) = −0.412, so mean = (0.97 − 0.206, −1.94 − 0.412)
    = (0.764, −2.352); officially x̂0 = (0.7, −2.6), score = −(x − 0.4·x̂0)/0.36 = (−2, 2.6667),
    x + Δ·v̂ − ½·0.09·score·Δ = (0.8 − 0.036, −2.4 + 0.048), the same. std = 0.3·√0.4 = 0.189737."""
    _, mean, std = _step_2(DanceSDE(0.3), 0.6, 0.2, [1.0, -2.0], [0.5, 1.0])
    torch.testing.assert_close(mean.flatten(), torch.tensor([0.764, -2.352]), rtol=0, atol=1e-6)
    assert std.flatten().tolist() == pytest.approx([0.189737], abs=1e-6)


def test_dance_sde_first_step_from_pure_noise_needs_no_stand_in():
    """At σ = 1 the (1 − σ) term vanishes and nothing is divided by 1 − σ, so the step is finite as
    written (unlike Flow-GRPO's g): σ = 1 → 0.8, η = 0.3, x = (1, −2), v̂ = (0.5, 1): mean
    = x·(1 − 0.09·0.2/2) + v̂·(−0.2) = (0.991 − 0.1, −1.982 − 0.2) = (0.891, −2.182), std = 0.3·√0.2
    = 0.134164. The last step onto σ' = 0 is stochastic too: 0.2 → 0 has std 0.3·√0.2."""
    _, mean, std = _step_2(DanceSDE(0.3), 1.0, 0.8, [1.0, -2.0], [0.5, 1.0])
    torch.testing.assert_close(mean.flatten(), torch.tensor([0.891, -2.182]), rtol=0, atol=1e-6)
    assert std.flatten().tolist() == pytest.approx([0.134164], abs=1e-6)
    assert _step_2(DanceSDE(0.3), 0.2, 0.0, [1.0, -2.0], [0.5, 1.0])[2].flatten().tolist() == pytest.approx(
        [0.134164], abs=1e-6)


def test_dance_sde_log_prob_is_the_full_gaussian_averaged_over_elements():
    """Officially (flux_step L161–167) −(x' − μ)²/(2σ²) − log σ − ½·log 2π, mean over elements: a
    sample one std from the mean in each element gives −½ − log 0.189737 − ½·log 2π
    = −0.5 + 1.662118 − 0.918939 = 0.243180, for each element and so for their mean."""
    _, mean, std = _step_2(DanceSDE(0.3), 0.6, 0.2, [1.0, -2.0], [0.5, 1.0])
    x_next = mean + std * torch.tensor([1.0, -1.0])
    assert gaussian_log_prob(x_next, mean, std).flatten().tolist() == pytest.approx([0.243180], abs=1e-6)
    assert not hasattr(DanceSDE(), "log_prob")  # the solver's Gaussian is the official one


def test_kl_std_by_hand():
    """Flow-GRPO's KL divides by its step's std_dev_t: for its SDE g = 0.7·√(0.6/0.4) = 0.857321 at
    σ = 0.6 → 0.2 (its step std 0.542218 over √0.4) and 0.7·√(1/0.2) = 1.565248 from σ = 1 → 0.8
    (the stand-in level); for CPS the step std 0.2·sin(0.2π) = 0.117557; DanceGRPO has no KL, and
    its std_dev_t is the step std 0.3·√0.4 = 0.189737."""
    u, v = torch.tensor([0.6]), torch.tensor([0.2])
    expected = {FlowSDE(0.7): 0.857321, CPS(0.4): 0.117557, DanceSDE(0.3): 0.189737}
    for rule, value in expected.items():
        std = _step(rule, 0.6, 0.2, 1.0, 0.5)[2]
        assert rule.kl_std(std, u, v).flatten().tolist() == pytest.approx([value], abs=1e-6), type(rule).__name__
    flow_sde = FlowSDE(0.7)
    first = _step(flow_sde, 1.0, 0.8, 0.0, 0.0)[2]
    assert flow_sde.kl_std(first, torch.tensor([1.0]), torch.tensor([0.8])).flatten().tolist() == pytest.approx(
        [1.565248], abs=1e-6)
    assert flow_sde.kl_std(first, torch.tensor([1.0]), torch.tensor([0.8])).shape == first.shape


def test_the_flow_rules_refuse_an_epsilon_family(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    x = torch.zeros(1, 1, 4, 2, 2)
    for rule in (FlowSDE(), CPS(), DanceSDE()):
        with pytest.raises(ValueError, match="DDIM"):
            rule.transition(family, lambda x_, t_: x_, x, torch.tensor([0.5]), torch.tensor([0.4]))


@pytest.mark.parametrize("kind, rule", [("sd15", DDIM(1.0)), ("sdxl", DDIM(1.0)), ("sd3", FlowSDE()), ("sd3", CPS()),
                                        ("sd3", DanceSDE()), ("wan", FlowSDE()), ("wan", CPS()), ("wan", DanceSDE())],
                         ids=["sd15-ddim", "sdxl-ddim", "sd3-flow_sde", "sd3-cps", "sd3-dance_sde", "wan-flow_sde",
                              "wan-cps", "wan-dance_sde"])
def test_the_recomputed_log_prob_is_the_samplers(kind, rule, tiny_path):
    """Ratio 1 before any update (flow_grpo #131/#211, DanceGRPO #70): each step's log-probability
    recomputed from the kept latents with the same weights equals the sampler's, to 1e-6."""
    from diffalign.families import load

    family = load(tiny_path(kind))
    prompts = ["a red cat", "a blue dog"]
    frames = 5 if family.media == "video" else None
    noise = initial_noise(family, len(prompts), 2, 32, generator=torch.Generator().manual_seed(0), frames=frames)
    cond = family.encode_prompts(prompts, group_size=2)
    grid = sampling_grid(family, 4, len(prompts))
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    traj = solve(family, family.denoiser, noise, cond, grid, rule, generator=gens, log_probs=True)
    steps = grid.shape[1] - 1
    with torch.no_grad():
        again = torch.stack([step_log_prob(family, family.denoiser, traj.latents[i], traj.latents[i + 1], grid[:, i],
                                           grid[:, i + 1], cond, rule=rule) for i in range(steps)])
    assert traj.log_prob.shape == (steps, len(prompts), 2)
    torch.testing.assert_close(again, traj.log_prob, rtol=0, atol=1e-6)
    assert (traj.log_prob[:-1] != 0).all()  # every step but a last one onto a clean level is stochastic
    if isinstance(rule, DanceSDE):
        assert (traj.log_prob[-1] != 0).all()  # DanceGRPO's last step onto σ' = 0 keeps its noise η·√σ
