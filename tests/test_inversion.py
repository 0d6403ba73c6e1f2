"""DDIM / Euler inversion: the official landing is the official code's loop under the diffusers
it pins; the exact landing lands on each group's t; inversion reconstructs what the model
generated, and ReNoise brings it closer.

Expected latents are written from first principles (the schedule rebuilt from its betas, the
flow path written out), never by calling the code under test.
"""

import pytest
import torch

from diffalign.inversion import InversionConfig, denoise, invert, time_grid

B, K = 2, 2


def _alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def _scales(kind, t):
    """``(a_t, s_t)`` per group, from the schedule (SD) or the flow path (SD3)."""
    if kind == "sd3":
        return 1 - t.double(), t.double()
    abar = _alphas_cumprod()[(t.double() * 999).round().long()]
    return abar.sqrt(), (1 - abar).sqrt()


def _constant(value):
    """A stand-in denoiser whose prediction is always ``value`` ([B·K, ...], diffusers' tuple output)."""
    return lambda *args, **kwargs: (value,)


def _cond(family, k=K):
    return family.encode_prompts(["a red cat", "a dog"], group_size=k)


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_the_latent_lands_exactly_on_t_between_grid_points(kind, tiny_path):
    """A model that always predicts the same ε (flow: the same velocity) moves the latent along one
    straight path of the forward process, so after inverting to t it must be that path's point at
    t — not at a neighbouring grid level, as the official code's fixed grid would leave it."""
    from diffalign.families import load

    family = load(tiny_path(kind))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, K, 4, 4, 4, generator=gen)
    pred = torch.randn(B * K, 4, 4, 4, generator=gen)
    t = torch.tensor([437 / 999, 901 / 999]) if kind != "sd3" else torch.tensor([0.437, 0.9011])
    inverted = invert(family, _constant(pred), x0, _cond(family), t, InversionConfig(steps=4, landing="exact"))
    a_t, s_t = (v.view(B, 1, 1, 1, 1) for v in _scales(kind, t))
    p = pred.double().unflatten(0, (B, K))
    if kind == "sd3":  # Euler on a constant velocity: x_σ = x0 + σ·v
        expected = x0.double() + t.double().view(B, 1, 1, 1, 1) * p
    else:  # the path x_t = a_t·c + s_t·ε through x0 at t = 0: c = (x0 − s_0·ε)/a_0
        a0, s0 = (v.view(1, 1, 1, 1, 1) for v in _scales(kind, torch.zeros(1)))
        expected = a_t * (x0.double() - s0 * p) / a0 + s_t * p
    torch.testing.assert_close(inverted.double(), expected, rtol=1e-4, atol=1e-4)
    # Each group has its own t: the same groups inverted one at a time give the same latents.
    alone = invert(family, _constant(pred[K:]), x0[1:], family.encode_prompts(["a dog"], group_size=K), t[1:],
                   InversionConfig(steps=4, landing="exact"))
    torch.testing.assert_close(alone, inverted[1:], rtol=1e-5, atol=1e-5)


def test_time_grids_end_exactly_where_asked():
    end = torch.tensor([0.3, 0.77])
    grid = time_grid(0.0, end, steps=3)
    assert grid.shape == (2, 4)
    assert grid[:, 0].tolist() == [0.0, 0.0] and torch.equal(grid[:, -1], end)
    assert (grid.diff(dim=1) > 0).all()
    falling = time_grid(1.0, 0.0, steps=5, batch=3)
    assert falling.shape == (3, 6) and (falling.diff(dim=1) < 0).all() and falling[:, -1].eq(0).all()


def _reconstruction(family, steps, renoise):
    """Generate from noise, invert the result with the same steps, generate again: relative errors
    of the recovered noise and of the regenerated latent."""
    model = family.denoiser.eval()
    cond = _cond(family)
    noise = torch.randn(B, K, model.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    sample = denoise(family, model, noise, cond, steps)
    recovered = invert(family, model, sample, cond, torch.ones(B), InversionConfig(steps=steps, renoise_iters=renoise,
                                                                                     landing="exact", renoise_at="end"))
    again = denoise(family, model, recovered, cond, steps)

    def rel(x, y):
        return float((x - y).pow(2).mean().sqrt() / y.pow(2).mean().sqrt())

    return rel(recovered, noise), rel(again, sample)


@pytest.mark.parametrize("kind", ["sd15", "sd21", "sd3"])
def test_inverting_a_sample_reconstructs_it_and_renoise_does_better(kind, tiny_path):
    """ε (SD1.5), v (SD2.1) and flow (SD3) families, 10 steps. Measured on the tiny models:
    regenerated-latent errors 7.5e-2 / 2.2e-1 / 1.7e-2 plain, 1.1e-2 / 4.3e-2 / 6.0e-3 with one
    ReNoise iteration, recovered-noise errors 1.1e-2 / 5.3e-2 / 7.8e-3 with it (the tiny random
    models are far from the smooth trained ones, so the plain errors are large; they fall with
    more steps). Denoising is the solver's DDIM step, whose last step lands where diffusers'
    DDIMScheduler lands (α = 1 under the tiny SD2.1's set_alpha_to_one), while inversion starts
    at t = 0's level as the official code's DDIMInverseScheduler from SD's config does: for SD2.1
    that round trip loses a little more (3.7e-2 / 4.5e-2 when denoising ended on t = 0's level)."""
    from diffalign.families import load

    family = load(tiny_path(kind))
    noise_plain, plain = _reconstruction(family, 10, renoise=0)
    noise_renoise, renoised = _reconstruction(family, 10, renoise=1)
    assert plain < 0.3 and noise_plain < 0.3
    assert renoised < 0.06 and noise_renoise < 0.06
    assert renoised < plain / 2 and noise_renoise < noise_plain / 2


def test_the_noise_kick_is_seeded_and_zero_without_eta(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    gen = torch.Generator().manual_seed(0)
    x0, pred = torch.randn(B, K, 4, 4, 4, generator=gen), torch.randn(B * K, 4, 4, 4, generator=gen)
    t, cond = torch.tensor([0.5, 0.9]), _cond(family)

    def run(eta, seed):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(B)]
        return invert(family, _constant(pred), x0, cond, t, InversionConfig(steps=3, eta=eta, landing="exact"),
                      generator=gens)

    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert torch.equal(run(0.1, 1), run(0.1, 1))
    kicked = run(0.1, 1) - run(0.0, 1)
    assert 0 < kicked.abs().mean() < 0.1  # small: η·σ_DDIM of each step


def test_guidance_needs_the_unconditional_conditioning(tiny_path):
    from diffalign.families import load

    family = load(tiny_path("sd15"))
    x0 = torch.zeros(B, K, 4, 4, 4)
    with pytest.raises(ValueError, match="uncond"):
        invert(family, _constant(torch.zeros(B * K, 4, 4, 4)), x0, _cond(family), torch.ones(B),
               InversionConfig(guidance=3.0))


@pytest.mark.parametrize("bad", [{"steps": 0}, {"renoise_iters": -1}, {"eta": -0.1}, {"model": "ema"},
                                 {"landing": "grid"}, {"renoise_at": "middle"}])
def test_inversion_config_is_checked(bad):
    with pytest.raises(ValueError):
        InversionConfig(**bad)


@pytest.mark.parametrize("kind", ["sd15", "sd21"])
def test_inversion_is_diffusers_ddim_inverse_scheduler_loop(kind, tiny_path):
    """The inversion rule walks the levels ``DDIMInverseScheduler`` walks (SD's config:
    ``set_alpha_to_one: false``, leading spacing, offset 1), with its update: the same latents to
    1e-5. The stand-in model predicts the same at every time, because diffusers' inversion loops
    tell the model the step's end time where this rule tells it the start (module docstring)."""
    from diffusers import DDIMInverseScheduler

    from diffalign.families import load
    from diffalign.inversion import Inversion
    from diffalign.solver import solve

    family = load(tiny_path(kind))
    config = {**family.pipe.scheduler.config, "set_alpha_to_one": False, "steps_offset": 1,
              "timestep_spacing": "leading"}
    scheduler = DDIMInverseScheduler.from_config(config)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 1, 4, 4, 4, generator=gen)
    pred = torch.randn(2, 4, 4, 4, generator=gen)
    expected = x0[:, 0]
    for timestep in scheduler.timesteps:
        expected = scheduler.step(pred, timestep, expected).prev_sample
    levels = torch.cat([torch.zeros(1), scheduler.timesteps.float() / (family.num_train_timesteps - 1)])[None].expand(2, -1)
    ours = solve(family, _constant(pred), x0, _cond(family, k=1), levels, Inversion()).final
    torch.testing.assert_close(ours[:, 0], expected, rtol=1e-5, atol=1e-5)
