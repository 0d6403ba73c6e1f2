"""Wan 2.2 in the wan family: A14B's two experts (routing by time, one-expert runs, a LoRA file per
expert that WanPipeline loads) and TI2V-5B (48-channel 16x VAE, per-token timesteps)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.families import FamilyError, load
from diffalign.solver import initial_noise, sampling_grid
from test_solver import eta_zero_images
from diffalign.testing import TINY_FRAMES, write_random_video_pairs

pytest.importorskip("av")
VIDEO_CONFIG = "training/configs/tiny/video/diffusion_dpo.yaml"
BOUNDARY = 0.875  # the tiny A14B's boundary_ratio, the released T2V checkpoint's


@pytest.fixture(scope="module")
def video_pairs(tmp_path_factory):
    return write_random_video_pairs(tmp_path_factory.mktemp("video") / "pairs", pairs=4, resolution=32)


@pytest.mark.parametrize("kind", ["wan22", "wan22_ti2v"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_eta_zero_reproduces_the_wan_pipeline_video(kind, guidance, tiny_path):
    """The same start noise, prompts, steps and guidance as ``WanPipeline`` with an Euler flow
    scheduler of the same shift: the same clip. On A14B the 4-step grid (σ = 1, 0.858, 0.602,
    0.009) crosses the boundary after the first step, so both experts are used; on TI2V-5B the
    pipeline gives the transformer a timestep per token (expand_timesteps), the family one per clip."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    family = load(tiny_path(kind))
    family.pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=family.flow_shift())
    prompts, steps = ["a red cat", "a blue dog"], 4
    noise = initial_noise(family, 2, 1, 32, generator=torch.Generator().manual_seed(3), frames=TINY_FRAMES)
    expected = family.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
                           num_frames=TINY_FRAMES, latents=noise[:, 0].clone(), output_type="pt").frames
    grid = sampling_grid(family, steps, 2)
    assert (grid[0, 0] >= BOUNDARY) and (grid[0, 1] < BOUNDARY)
    clips = eta_zero_images(family, prompts, noise, steps, guidance)[0].transpose(1, 2)  # [B, F, 3, H, W] as the pipeline
    torch.testing.assert_close(clips, expected.float(), rtol=1e-4, atol=1e-4)


def test_each_time_reaches_its_expert(tiny_path):
    """σ·N ≥ boundary_ratio·N goes to ``transformer`` (high noise), below to ``transformer_2``; a
    batch that straddles the boundary is split and put back in order."""
    family = load(tiny_path("wan22"))
    pair = family.denoiser
    seen = {}
    for name, expert in (("high", pair.high), ("low", pair.low)):
        expert.register_forward_hook(lambda m, args, kwargs, out, name=name: seen.setdefault(name, []).append(
            kwargs["timestep"].tolist()), with_kwargs=True)
    latents = torch.randn(3, 1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    prompts = ["a", "b", "c"]
    cond = family.encode_prompts(prompts, group_size=1)
    t = torch.tensor([0.95, 0.875, 0.5])
    with torch.no_grad():
        both = family.predict(pair, latents, t, cond)
        split = {name: calls[:] for name, calls in seen.items()}
        seen.clear()
        alone = [family.predict(pair, latents[i:i + 1], t[i:i + 1], family.encode_prompts([p], group_size=1))
                 for i, p in enumerate(prompts)]
    assert split == {"high": [[950.0, 875.0]], "low": [[500.0]]}  # the batch split at the boundary
    assert seen == {"high": [[950.0], [875.0]], "low": [[500.0]]}  # one sample at a time
    torch.testing.assert_close(both, torch.cat(alone), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        by_high = family.predict(pair.high, latents[2:], t[2:], family.encode_prompts(["c"], group_size=1))
    assert not torch.allclose(alone[2], by_high)  # the low-noise expert's answer, not the high one's


@pytest.mark.parametrize("expert, inside", [("high_noise", lambda t: t >= BOUNDARY), ("low_noise", lambda t: t < BOUNDARY)])
def test_a_one_expert_run_draws_its_times_in_its_range(expert, inside, tiny_path):
    family = load(tiny_path("wan22"), experts=[expert])
    latents = torch.zeros(512, 1, 16, 2, 4, 4)
    _, t = family.sample_noise_and_time(latents, torch.Generator().manual_seed(0))
    assert inside(t).all()
    assert t.max() - t.min() > (0.1 if expert == "high_noise" else 0.5)  # spread over the range, not one value


def test_experts_are_refused_where_there_is_one_denoiser(tiny_path):
    with pytest.raises(FamilyError, match="model.experts applies to a two-expert Wan 2.2"):
        load(tiny_path("wan"), experts=["high_noise"])
    with pytest.raises(FamilyError, match="model.experts: expected a non-empty list"):
        load(tiny_path("wan22"), experts=["middle"])


def _train(tiny_path, data, out, *overrides):
    assert main(["train", "--config", VIDEO_CONFIG, f"model.path={tiny_path('wan22')}", f"data.path={data}",
                 "data.cache=false", f"output_dir={out}", *overrides]) == 0
    return [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_one_expert_full_run_leaves_the_other_bit_identical(tiny_path, video_pairs, tmp_path):
    from diffalign.config import load_config
    from diffalign.training import Trainer

    config = load_config(VIDEO_CONFIG, [f"model.path={tiny_path('wan22')}", f"data.path={video_pairs}",
                                        "data.cache=false", f"output_dir={tmp_path / 'run'}", "lora=null",
                                        "optim.lr=1e-3", "model.experts=[low_noise]"])
    trainer = Trainer(config)
    high_before = {k: v.clone() for k, v in trainer.family.pipe.transformer.state_dict().items()}
    low_before = {k: v.clone() for k, v in trainer.family.pipe.transformer_2.state_dict().items()}
    result = trainer.run()
    assert result.weights == tmp_path / "run" / "final" / "transformer_2"  # what `diffalign train` prints
    high_after = trainer.family.pipe.transformer.state_dict()
    assert all(torch.equal(high_after[k], v) for k, v in high_before.items())
    low_after = trainer.family.pipe.transformer_2.state_dict()
    assert any(not torch.equal(low_after[k], v) for k, v in low_before.items())
    saved = sorted(p.name for p in (tmp_path / "run" / "final").iterdir())
    assert saved == ["transformer_2"]  # the trained expert only, in the pipeline's layout


def test_each_experts_lora_loads_into_its_pipeline_component(tiny_path, video_pairs, tmp_path):
    """One file per expert; ``WanPipeline.load_lora_weights`` reads ``transformer``'s by default and
    ``transformer_2``'s with ``load_into_transformer_2``; each changes the clip."""
    from diffusers import WanPipeline

    out = tmp_path / "run"
    losses = _train(tiny_path, video_pairs, out, "optim.lr=5e-2", "max_steps=4", "lora.rank=4", "lora.alpha=8")
    assert len(losses) == 4
    files = {p.name: load_file(str(p)) for p in (out / "lora").glob("*.safetensors")}
    assert set(files) == {"pytorch_lora_weights.safetensors", "pytorch_lora_weights_transformer_2.safetensors"}
    assert all(k.startswith("transformer.") for f in files.values() for k in f)

    def sample(*loads):
        pipe = WanPipeline.from_pretrained(str(tiny_path("wan22")))
        pipe.set_progress_bar_config(disable=True)
        for weight_name, into_2 in loads:
            pipe.load_lora_weights(str(out / "lora"), weight_name=weight_name, load_into_transformer_2=into_2)
        return pipe("a red cat", num_frames=TINY_FRAMES, height=32, width=32, num_inference_steps=4,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).frames

    base = sample()
    high = sample(("pytorch_lora_weights.safetensors", False))
    both = sample(("pytorch_lora_weights.safetensors", False), ("pytorch_lora_weights_transformer_2.safetensors", True))
    assert (high - base).abs().max() > 1e-4 and (both - high).abs().max() > 1e-4


@pytest.mark.slow
def test_the_a14b_config_trains_three_steps_on_the_tiny_pair(tiny_path, video_pairs, tmp_path):
    """training/configs/wan22/a14b/diffusion_dpo.yaml as shipped but for the sizes (tiny pipeline,
    32 px, 5 frames, fp32 on the CPU)."""
    out = tmp_path / "run"
    assert main(["train", "--config", "training/configs/wan22/a14b/diffusion_dpo.yaml",
                 f"model.path={tiny_path('wan22')}", f"data.path={video_pairs}", "data.resolution=32",
                 f"data.frames={TINY_FRAMES}", "data.cache=false", "mixed_precision='no'", "gradient_checkpointing=false",
                 "gradient_accumulation_steps=1", "max_steps=3", "checkpoint_every=0", "resume=null", "lora.rank=4",
                 "logging.report_to=none", f"output_dir={out}"]) == 0
    assert sorted(p.name for p in (out / "lora").glob("*.safetensors")) == [
        "pytorch_lora_weights.safetensors", "pytorch_lora_weights_transformer_2.safetensors"]
