"""The solver with log-probabilities: the step's density written out by hand, the diffusers
pipelines' own images at η = 0, and the flow SDE's marginals.

Expected values come from the schedule rebuilt from its betas (SD) or the flow path written out
(SD3), never from the code under test.
"""

import math

import pytest
import torch

from diffalign.solver import DDIM, gaussian_log_prob, initial_noise, sampling_grid, solve, step_log_prob

B, K = 2, 2


def eta_zero_images(family, prompts, noise, steps, guidance=1.0):
    """Our deterministic sampler from ``noise [B, 1, *latent]`` (the prompts, with the empty
    prompt as the unconditional one where ``guidance != 1``): ``(pictures in [0, 1] [B, 3, (F,) H, W],
    the trajectory)``, what each family's test compares with its pipeline's output."""
    cond = family.encode_prompts(prompts, group_size=1)
    uncond = family.encode_prompts([""] * len(prompts), group_size=1) if guidance != 1 else None
    grid = sampling_grid(family, steps, len(prompts), noise.shape[-2:])
    traj = solve(family, family.denoiser, noise, cond, grid, DDIM(0.0), guidance=guidance, uncond=uncond)
    return (family.decode(traj.final)[:, 0] / 2 + 0.5).clamp(0, 1), traj


def _alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def _constant(value):
    """A stand-in denoiser whose prediction is always ``value`` ([B·K, ...], diffusers' tuple output)."""
    return lambda *args, **kwargs: (value,)


def test_the_step_log_probability_is_the_gaussian_density_written_out(tiny_path):
    """One η = 1 DDIM step of an ε-model that always predicts ``p``, from t = 951 to t = 901:
    the mean and σ of DDIM's Eq. 12 from ᾱ, and the density of the step taken."""
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, K, 4, 4, 4, generator=gen)
    p = torch.randn(B * K, 4, 4, 4, generator=gen)
    cond = family.encode_prompts(["a red cat", "a dog"], group_size=K)
    grid = torch.tensor([[951 / 999, 901 / 999]] * B)
    traj = solve(family, _constant(p), x, cond, grid, DDIM(1.0), generator=torch.Generator().manual_seed(1),
                  log_probs=True)

    abar = _alphas_cumprod()
    a_u, s_u, a_v, s_v = abar[951].sqrt(), (1 - abar[951]).sqrt(), abar[901].sqrt(), (1 - abar[901]).sqrt()
    sigma = ((1 - abar[901]) / (1 - abar[951]) * (1 - abar[951] / abar[901])).sqrt()
    eps = p.double().unflatten(0, (B, K))
    x0 = (x.double() - s_u * eps) / a_u
    mean = a_v * x0 + (s_v**2 - sigma**2).sqrt() * eps
    x_next = traj.final.double()
    expected = (-(x_next - mean) ** 2 / (2 * sigma**2) - sigma.log() - 0.5 * math.log(2 * math.pi)).mean((2, 3, 4))
    torch.testing.assert_close(traj.log_prob[0].double(), expected, rtol=1e-5, atol=1e-5)
    # The step really was drawn around that mean with that σ (64 elements per latent).
    z = (x_next - mean) / sigma
    assert abs(z.mean().item()) < 0.3 and 0.7 < z.std().item() < 1.3
    # Recomputed from the two latents (SPO's training path), and the sum is the whole latent's density.
    again = step_log_prob(family, _constant(p), x, traj.final, grid[:, 0], grid[:, 1], cond, rule=DDIM(1.0))
    torch.testing.assert_close(again, traj.log_prob[0], rtol=1e-6, atol=1e-6)
    total = step_log_prob(family, _constant(p), x, traj.final, grid[:, 0], grid[:, 1], cond, rule=DDIM(1.0),
                          reduction="sum")
    torch.testing.assert_close(total.double(), expected * 64, rtol=1e-5, atol=1e-4)


def test_a_point_mass_step_has_log_probability_zero_and_the_density_peaks_at_the_mean():
    mean = torch.zeros(1, 2, 3)
    assert gaussian_log_prob(mean, mean, torch.zeros(1, 1, 1)).abs().max() == 0
    std = torch.full((1, 1, 1), 0.5)
    at_mean = gaussian_log_prob(mean, mean, std)
    torch.testing.assert_close(at_mean, torch.full((1, 2), -math.log(0.5) - 0.5 * math.log(2 * math.pi)))
    assert (gaussian_log_prob(mean + 0.1, mean, std) < at_mean).all()


def test_flow_sde_step_keeps_the_marginal():
    """For the true velocity of one clean point x0 (so ε̂ and x̂0 are exact), a stochastic SD3 step
    from σ_u to σ_v must leave x_v ~ N((1 − σ_v)·x0, σ_v²), whatever η — the property the SDE
    form is built to keep (checked on 20,000 draws)."""
    from diffalign.solver import draw, step_mean_std

    class Flow:  # the SD3 family's two path operations, written out
        def noise_scales(self, t):
            return 1 - t.float(), t.float()

        def final_scales(self):
            return 1.0, 0.0

        def split_prediction(self, pred, noisy, t):
            s = t.view(-1, *([1] * (noisy.ndim - 1)))
            return noisy + (1 - s) * pred, noisy - s * pred

    gen = torch.Generator().manual_seed(0)
    n, x0 = 20_000, torch.tensor(0.7)
    su, sv = torch.tensor([0.8]), torch.tensor([0.5])
    eps = torch.randn(1, n, 1, generator=gen)
    x = (1 - su) * x0 + su * eps
    velocity = eps - x0
    for eta in (0.0, 0.7, 1.0):
        mean, std = step_mean_std(Flow(), velocity, x, su, sv, eta)
        x_v = mean + std * draw(mean, gen)
        assert abs(x_v.mean().item() - (1 - 0.5) * 0.7) < 0.02
        assert abs(x_v.std().item() - 0.5) < 0.02


def test_eta_zero_at_flow_is_the_euler_step(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd3"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, K, 4, 4, 4, generator=gen)
    v = torch.randn(B * K, 4, 4, 4, generator=gen)
    cond = family.encode_prompts(["a red cat", "a dog"], group_size=K)
    grid = torch.tensor([[0.9, 0.6]] * B)
    out = solve(family, _constant(v), x, cond, grid, DDIM(0.0)).final
    torch.testing.assert_close(out, x + (0.6 - 0.9) * v.unflatten(0, (B, K)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "sd3", "sd35"])
def test_eta_zero_reproduces_the_diffusers_pipeline_image(kind, tiny_path):
    """The same start noise, prompts, steps and guidance: our deterministic sampler and the
    pipeline (SD1.5 with diffusers' DDIMScheduler, SD3 with its own Euler) give the same image."""
    from diffusers import DDIMScheduler

    from diffalign.families import load

    family = load(tiny_path(kind))
    pipe = family.pipe
    if kind == "sd15":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompts, steps, guidance = ["a red cat", "a blue dog"], 4, 3.0
    noise = initial_noise(family, len(prompts), 1, 32, generator=torch.Generator().manual_seed(3))
    expected = pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, latents=noise[:, 0].clone(),
                    height=32, width=32, output_type="pt").images
    images, traj = eta_zero_images(family, prompts, noise, steps, guidance)
    torch.testing.assert_close(images, expected.float(), rtol=1e-4, atol=1e-4)
    assert traj.latents.shape == (steps + 1, len(prompts), 1, *noise.shape[2:])


def test_eta_zero_reproduces_the_flux_pipeline_image(tiny_path):
    """FLUX: the same start noise (unpacked), prompts and steps, the pipeline's embedded guidance
    and its size-dependent shift: our deterministic sampler gives the FluxPipeline's image, at two
    sizes (the shift differs) and an unsquare one."""
    from diffalign.families import load
    from diffalign.families.packed import pack

    family = load(tiny_path("flux"))
    prompts, steps = ["a red cat", "a blue dog"], 4
    for height, width in ((32, 32), (64, 32)):
        noise = initial_noise(family, len(prompts), 1, (height, width), generator=torch.Generator().manual_seed(3))
        expected = family.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=family.embedded_guidance,
                               latents=pack(noise[:, 0].clone()), height=height, width=width,
                               output_type="pt").images
        images, _ = eta_zero_images(family, prompts, noise, steps)
        torch.testing.assert_close(images, expected.float(), rtol=1e-4, atol=1e-4)


def test_no_gradient_through_the_chain_unless_asked(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    cond = family.encode_prompts(["a red cat"], group_size=1)
    noise = initial_noise(family, 1, 1, 32, generator=torch.Generator().manual_seed(0))
    grid = sampling_grid(family, 2, 1)
    assert not solve(family, family.denoiser, noise, cond, grid, DDIM(1.0)).final.requires_grad
    out = solve(family, family.denoiser, noise, cond, grid, DDIM(1.0), grad=True).final
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in family.denoiser.parameters())
    family.denoiser.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["sd15", "sd21"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_each_step_is_diffusers_ddim_step_with_eta(kind, eta, tiny_path):
    """Every step of a 5-step grid, the last onto t = 0 included: the DDIM rule's ``mean + std·z``
    equals ``DDIMScheduler.step(pred, t, x, eta, variance_noise=z)`` (ε and v prediction)."""
    from diffusers import DDIMScheduler

    from diffalign.families import load
    from diffalign.solver import take_step

    family = load(tiny_path(kind))
    scheduler = DDIMScheduler.from_config(family.pipe.scheduler.config)
    scheduler.set_timesteps(5)
    grid = sampling_grid(family, 5, 1)
    gen = torch.Generator().manual_seed(0)
    rule = DDIM(eta)
    for i, timestep in enumerate(scheduler.timesteps):
        x = torch.randn(1, 1, 4, 4, 4, generator=gen)
        pred = torch.randn(1, 1, 4, 4, 4, generator=gen)
        z = torch.randn(1, 1, 4, 4, 4, generator=gen)
        expected = scheduler.step(pred[:, 0], timestep, x[:, 0], eta=eta, variance_noise=z[:, 0]).prev_sample
        _, mean, std = rule.transition(family, lambda x_, t_: pred, x, grid[:, i], grid[:, i + 1])
        ours = mean + std * z if rule.stochastic else take_step(rule, mean, std, None)
        torch.testing.assert_close(ours[:, 0], expected, rtol=1e-5, atol=1e-5)
