"""The preference steps: the inversion step with forward-noised latents in place of inverted ones
makes exactly the denoising step's terms, so InPO there is Diffusion-DPO; with real inversion the
errors are taken at the inverted latents, against the noise they imply."""

import pytest
import torch

from diffalign.inversion import InversionConfig
from diffalign.objectives import DiffusionDPO, DiffusionDPOConfig, InPO, InPOConfig
from diffalign.steps import DenoisingStep, InversionStep, group_generators


def test_inversion_with_forward_noising_is_the_denoising_step(setting, monkeypatch):
    family, reference, batch = setting
    import diffalign.steps.inversion as inversion_step

    drawn = {}

    def forward_noise(family_, model, latents, cond, t, config, **kwargs):
        drawn["noisy"] = family.add_noise(latents, drawn["noise"], t)
        return drawn["noisy"]

    real_sample = family.sample_noise_and_time

    def keep_noise(latents, generator=None):
        drawn["noise"], t = real_sample(latents, generator=generator)
        return drawn["noise"], t

    monkeypatch.setattr(inversion_step, "invert", forward_noise)
    monkeypatch.setattr(family, "sample_noise_and_time", keep_noise)
    beta = 2000.0
    dpo = DenoisingStep(family, DiffusionDPO(DiffusionDPOConfig(beta=beta)), reference, 2)
    inpo = InversionStep(family, InPO(InPOConfig(beta=beta)), reference, 2)
    terms_dpo = dpo(family.denoiser, batch, group_generators(0, 0, batch["indices"]))
    terms_inpo = inpo(family.denoiser, batch, group_generators(0, 0, batch["indices"]))
    torch.testing.assert_close(terms_inpo.policy_err, terms_dpo.policy_err, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms_inpo.ref_err, terms_dpo.ref_err, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms_inpo.t, terms_dpo.t)
    loss_inpo = InPO(InPOConfig(beta=beta)).loss(terms_inpo).loss
    loss_dpo = DiffusionDPO(DiffusionDPOConfig(beta=beta)).loss(terms_dpo).loss
    torch.testing.assert_close(loss_inpo, loss_dpo, rtol=1e-5, atol=1e-6)


def test_the_errors_are_taken_at_the_inverted_latents(setting, monkeypatch):
    """The model sees the inverted latent (not a forward-noised one) at the sampled t, and its
    target is the noise that latent implies."""
    family, reference, batch = setting
    import diffalign.steps.inversion as inversion_step

    seen = {}
    real_invert, real_predict = inversion_step.invert, family.predict

    def keep_inverted(*args, **kwargs):
        seen["inverted"] = real_invert(*args, **kwargs)
        return seen["inverted"]

    def keep_input(model, noisy, t, cond):
        seen["input"], seen["t"] = noisy, t
        return real_predict(model, noisy, t, cond)

    monkeypatch.setattr(inversion_step, "invert", keep_inverted)
    monkeypatch.setattr(family, "predict", keep_input)
    step = InversionStep(family, InPO(InPOConfig()), reference, 2)
    terms = step(family.denoiser, batch, group_generators(0, 0, batch["indices"]))
    torch.testing.assert_close(seen["input"].float(), seen["inverted"].float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen["t"], terms.t)
    assert terms.policy_err.shape == (2, 2) and torch.isfinite(terms.policy_err).all()


def test_inverting_with_the_reference_needs_one(setting):
    family, _, _ = setting
    with pytest.raises(ValueError, match="needs the reference"):
        InversionStep(family, InPO(InPOConfig()), None, 2, InversionConfig(model="reference"))
