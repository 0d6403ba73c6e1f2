"""DPM-Solver++(2M) as a noise rule: every step equals the paper's update written out by hand
(Lu et al., 2022, Alg. 2, in σ on a flow) and diffusers' ``DPMSolverMultistepScheduler``
(``dpmsolver++``, order 2, the last step first order onto σ = 0) on the tiny SD3, driven by the same model; the first step is DDIM's (η = 0), and a new walk forgets
the last one."""

import math

import torch

from diffalign.dpm_solver import DPMSolver2M
from diffalign.solver import DDIM, initial_noise, sampling_grid, solve


def test_each_step_is_the_paper_update_written_out_on_a_flow(tiny_path):
    """A stand-in velocity model ``v̂ = x/2 + p`` (so x̂0 = x − σ·v̂ changes along the path and the
    second-order term acts) on a 4-step grid: x̂0, λ = log((1 − σ)/σ), h, r and the (2M) correction
    by hand in float64. From σ = 1 (λ = −∞) the second step's correction is 0 (r = ∞), as diffusers'."""
    from diffalign.families import load

    family = load(tiny_path("sd3"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 4, 4, 4, generator=gen)
    p = torch.randn(1, 4, 4, 4, generator=gen)
    grid = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]])
    cond = family.encode_prompts(["a red cat"], group_size=1)
    model = lambda *args, **kwargs: (kwargs["hidden_states"] / 2 + p,)  # noqa: E731
    ours = solve(family, model, x, cond, grid, DPMSolver2M()).latents[:, 0, 0].double()

    sig = [float(v) for v in grid[0]]
    lam = [math.log((1 - s) / s) if 0 < s < 1 else None for s in sig]
    want, prev_x0 = [x[0, 0].double()], None
    for i in range(4):
        xi, s_u, s_v = want[-1], sig[i], sig[i + 1]
        x0 = xi - s_u * (xi / 2 + p[0].double())
        if s_v == 0:  # onto the clean end: first order, x̂0 itself
            nxt = x0
        elif lam[i] is None:  # σ = 1 (λ = −∞): the first step, DDIM's
            nxt = (1 - s_v) * x0 + s_v * (xi - (1 - s_u) * x0) / s_u
        else:
            h = lam[i + 1] - lam[i]
            nxt = (s_v / s_u) * xi - (1 - s_v) * (math.exp(-h) - 1) * x0
            if prev_x0 is not None and lam[i - 1] is not None:
                r = (lam[i] - lam[i - 1]) / h
                nxt = nxt - 0.5 * (1 - s_v) * (math.exp(-h) - 1) * (x0 - prev_x0) / r
        prev_x0 = x0
        want.append(nxt)
    torch.testing.assert_close(ours, torch.stack(want), rtol=1e-5, atol=1e-5)


def test_each_step_is_diffusers_dpmsolver_plus_plus_2m_on_a_flow(tiny_path):
    from diffusers import DPMSolverMultistepScheduler

    from diffalign.families import load

    family = load(tiny_path("sd3"))
    steps, prompts = 6, ["a red cat", "a blue dog"]
    cond = family.encode_prompts(prompts, group_size=1)
    noise = initial_noise(family, 2, 1, 32, generator=torch.Generator().manual_seed(0))
    grid = sampling_grid(family, steps, 2)
    ours = solve(family, family.denoiser, noise, cond, grid, DPMSolver2M()).latents

    scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                                            final_sigmas_type="zero", prediction_type="flow_prediction",
                                            use_flow_sigmas=True)
    scheduler.set_timesteps(steps)
    scheduler.sigmas = grid[0].double().clone()  # the same σ grid, ending at 0
    scheduler.timesteps = grid[0, :-1] * 1000
    scheduler._step_index = 0
    x = noise[:, 0].clone()
    with torch.no_grad():
        for i in range(steps):
            velocity = family.predict(family.denoiser, x[:, None], grid[:, i], cond)[:, 0].float()
            x = scheduler.step(velocity, scheduler.timesteps[i], x).prev_sample.float()
            torch.testing.assert_close(ours[i + 1, :, 0], x, rtol=1e-5, atol=1e-5)


def test_the_first_step_is_ddim_and_a_new_walk_starts_first_order(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    cond = family.encode_prompts(["a red cat"], group_size=1)
    noise = initial_noise(family, 1, 1, 32, generator=torch.Generator().manual_seed(1))
    grid = sampling_grid(family, 4, 1)
    rule = DPMSolver2M()
    first = solve(family, family.denoiser, noise, cond, grid, rule)
    again = solve(family, family.denoiser, noise, cond, grid, rule)  # the same rule: its history is forgotten
    ddim = solve(family, family.denoiser, noise, cond, grid, DDIM(0.0))
    torch.testing.assert_close(first.latents[1], ddim.latents[1], rtol=0, atol=1e-6)
    assert not torch.allclose(first.latents[2], ddim.latents[2], atol=1e-4)  # the second step is second order
    torch.testing.assert_close(again.latents, first.latents, rtol=0, atol=0)
