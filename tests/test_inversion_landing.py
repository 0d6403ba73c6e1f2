"""The official landing of InPO's and SmPO's inversion: the official ``train.py`` loop (InPO
L995–1011, SmPO L1002–1022) under the diffusers those repositories pin (0.20), written out here
by hand for one pair at a time, as the official code runs it (per-device batch 1).

diffusers 0.20's ``DDIMInverseScheduler.set_timesteps(S)`` (``scheduling_ddim_inverse.py``
L274–294 of the 0.20.0 wheel) builds the leading grid ``k·(N // S) + steps_offset``, rolls it by
one and puts ``grid[1] − N // S`` first; its ``step(ε, g)`` rises from level ``g`` (the initial
alpha below 0) to ``g + N // S``. Today's ``step(ε, g + N // S)`` computes that same rise (it
reads the start one spacing below the timestep it is given), so the loop below calls it so.
"""

import numpy as np
import pytest
import torch

from diffalign.inversion import Inversion, InversionConfig, invert, landing_grid

N = 1000


def _pinned_starts(config: dict, steps: int) -> list[int]:
    """The rolled grid of diffusers 0.20's ``set_timesteps`` (leading spacing), by hand."""
    ratio = N // steps
    grid = (np.arange(0, steps) * ratio).round().astype(np.int64) + config["steps_offset"]
    grid = np.roll(grid, 1)
    grid[0] = int(grid[1] - ratio)
    return grid.tolist()


def _official_loop(family, x0, embeds, t_index: int, steps: int, renoise: bool, set_alpha_to_one: bool):
    """One pair ``x0 [2, C, h, w]`` inverted as the official loop does: every grid point below
    ``t_index``, the model asked at the grid point, SmPO's ReNoise at the same grid point."""
    from diffusers import DDIMInverseScheduler

    config = {**family.pipe.scheduler.config, "set_alpha_to_one": set_alpha_to_one}
    inverse = DDIMInverseScheduler.from_config(config)
    inverse.set_timesteps(steps)
    unet, ratio = family.denoiser, N // steps
    z = x0.clone()
    with torch.no_grad():
        for g in [g for g in _pinned_starts(config, steps) if g < t_index]:
            timestep = torch.tensor([g, g])
            eps = unet(z, timestep, encoder_hidden_states=embeds).sample
            rise = inverse.step(eps, g + ratio, z).prev_sample
            if renoise:
                eps_again = unet(rise, timestep, encoder_hidden_states=embeds).sample
                rise = inverse.step((eps + eps_again) / 2, g + ratio, z).prev_sample
            z = rise
    return z


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("steps,renoise", [(10, False), (5, True)])
def test_official_landing_is_the_pinned_loop(steps, renoise, set_alpha_to_one, tiny_path):
    """InPO (S = 10) and SmPO (S = 5, ReNoise at the start time): every pair of a batch with its own
    t lands where the official loop leaves that pair, to 1e-5; SD1.5's config
    (``set_alpha_to_one: false``) and the tiny one's (true) both."""
    from diffusers import DDIMScheduler

    from diffalign.families import load

    family = load(tiny_path("sd15"))
    family.pipe.scheduler = DDIMScheduler.from_config({**family.pipe.scheduler.config,
                                                       "set_alpha_to_one": set_alpha_to_one})
    indices = [0, 1, 2, 101, 102, 437, 801, 802, 950, 999]
    t = torch.tensor(indices, dtype=torch.float32) / (N - 1)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(indices), 2, 4, 8, 8, generator=gen)
    cond = family.encode_prompts([f"a red cat {i}" for i in indices], group_size=2)
    config = InversionConfig(steps=steps, renoise_iters=int(renoise), landing="official", renoise_at="start")
    ours = invert(family, family.denoiser, x0, cond, t, config)
    for b, index in enumerate(indices):
        expected = _official_loop(family, x0[b], cond.prompt_embeds[b], index, steps, renoise, set_alpha_to_one)
        torch.testing.assert_close(ours[b], expected, rtol=1e-5, atol=1e-5, msg=f"t index {index}")


def test_the_grid_lands_on_the_first_level_at_or_above_t(tiny_path):
    """SD1.5's 10-step grid: levels −99, 1, 101, …, 901; t lands on the first level ≥ t, and
    above the last start (801) on 901."""
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    levels = (family.inversion_levels(10) * (N - 1)).round().long().tolist()
    assert levels == [-99] + [1 + 100 * k for k in range(10)]
    cases = {0: 1, 1: 1, 2: 101, 101: 101, 102: 201, 500: 501, 801: 801, 802: 901, 999: 901}
    t = torch.tensor(list(cases), dtype=torch.float32) / (N - 1)
    landed = (landing_grid(family, t, 10)[:, -1] * (N - 1)).round().long().tolist()
    assert landed == list(cases.values())


def test_flow_levels_are_the_sampler_grid_upwards(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd3"))
    levels = family.inversion_levels(5)
    torch.testing.assert_close(levels, family.sampling_times(5).flip(0))
    assert levels[0] == 0 and (levels.diff() > 0).all()


def test_the_noise_kick_is_ddim_variance_between_grid_levels(tiny_path):
    """InPO's kick after a step from grid point g to g + Δ: ``η·√DDIMScheduler._get_variance(g + Δ, g)``,
    as the official L1008–1010 computes it (the first step from below 0 reads the final alpha)."""
    from diffusers import DDIMScheduler

    from diffalign.families import load

    family = load(tiny_path("sd15"))
    scheduler = DDIMScheduler.from_config(family.pipe.scheduler.config)
    rule = Inversion(eta=0.1)
    x = torch.randn(3, 2, 4, 4, 4)
    starts = torch.tensor([-99, 1, 401])
    u, v = starts.float() / (N - 1), (starts + 100).float() / (N - 1)
    pred = lambda x_, t_: torch.zeros_like(x_)  # noqa: E731
    std = rule.transition(family, pred, x, u, v)[2].flatten()
    expected = torch.stack([0.1 * scheduler._get_variance(int(g) + 100, int(g)) ** 0.5 for g in starts]).float()
    torch.testing.assert_close(std, expected, rtol=1e-5, atol=1e-7)


def test_ended_groups_are_not_run(tiny_path):
    """A group whose grid has ended costs no model call: the forwards' batch sizes add up to the
    steps each group takes (t = 0.05 takes 2 steps of the 10-step grid, 0.95 all 10)."""
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    sizes = []

    def model(noisy, *args, **kwargs):
        sizes.append(noisy.shape[0])
        return (torch.zeros_like(noisy),)

    t = torch.tensor([0.05, 0.95])
    x0 = torch.randn(2, 2, 4, 4, 4)
    invert(family, model, x0, family.encode_prompts(["a", "b"], group_size=2), t, InversionConfig(steps=10))
    assert sum(sizes) == 2 * (2 + 10) and max(sizes) == 4 and min(sizes) == 2
