"""SD1.5/2.1 specifics: time conversion and Min-SNR weighting."""

import pytest
import torch

from diffalign.families import FamilyError, load


def _snr(index):
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, dim=0)[index]
    return (abar / (1 - abar)).float()


def test_time_round_trips_to_integer_timesteps(tiny_path):
    family = load(tiny_path("sd15"))
    index = torch.arange(1000)
    assert torch.equal(family.timestep_index(family._time_from_index(index)), index)
    assert family._time_from_index(torch.tensor([0, 999])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("kind, denominator", [("sd15", "snr"), ("sd21", "snr+1")])
def test_min_snr_weights(tiny_path, kind, denominator):
    family = load(tiny_path(kind), loss_weighting="min_snr", snr_gamma=5.0)
    index = torch.tensor([10, 300, 900])
    snr = _snr(index)
    expected = snr.clamp(max=5.0) / (snr if denominator == "snr" else snr + 1)
    torch.testing.assert_close(family.loss_weight(family._time_from_index(index)), expected, rtol=1e-4, atol=1e-6)
    if denominator == "snr":  # for ε, low noise (high SNR) is down-weighted, high noise keeps ≈ 1
        assert expected[0] < 0.1 and expected[2] == pytest.approx(1.0)


def test_weighting_enters_the_error(tiny_path):
    plain = load(tiny_path("sd15"))
    weighted = load(tiny_path("sd15"), loss_weighting="min_snr")
    latents = torch.randn(2, 2, 4, 8, 8)
    noise, t = plain.sample_noise_and_time(latents, torch.Generator().manual_seed(0))
    cond = plain.encode_prompts(["a", "b"], group_size=2)
    with torch.no_grad():
        e_plain = plain.denoising_error(plain.denoiser, latents, cond, noise, t)
        e_weighted = weighted.denoising_error(weighted.denoiser, latents, cond, noise, t)
    torch.testing.assert_close(e_weighted, e_plain * weighted.loss_weight(t)[:, None])


def test_weightings_of_other_families_are_refused(tiny_path):
    with pytest.raises(FamilyError, match="does not apply to the sd family"):
        load(tiny_path("sd15"), loss_weighting="cosmap")
    with pytest.raises(FamilyError, match="use_t5 does not apply"):
        load(tiny_path("sd15"), use_t5=False)
