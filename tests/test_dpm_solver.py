"""DPM-Solver++(2M) as a noise rule: every step equals diffusers' ``DPMSolverMultistepScheduler``
(``dpmsolver++``, order 2, the last step first order onto σ = 0) on the tiny SD3's flow, driven by
the same model; the first step is DDIM's (η = 0), and a new walk forgets the last one."""

import torch

from diffalign.dpm_solver import DPMSolver2M
from diffalign.solver import DDIM, initial_noise, sampling_grid, solve


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
