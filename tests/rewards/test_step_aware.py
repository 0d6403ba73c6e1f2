"""The step-aware preference model (SPO's SPM): identity init, time conditioning, the authors'
checkpoint layout, and training on pairs with resume and held-out accuracy (tiny models)."""

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reward_images import as_tensor, clip_normalise, smooth_images

from diffalign.rewards.base import RewardLoadError
from diffalign.rewards.step_aware import StepAwarePreferenceModel, authors_to_ours, ours_to_authors, pixels_from_noisy
from diffalign.rewards.step_aware_training import SPMTrainConfig, pair_labels, spm_pair_loss, split_heldout, train_step_aware
from diffalign.rewards.tiny import save_tiny_clip, save_tiny_step_aware_authors_layout, tiny_step_aware

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red cat", "a blue dog", "a green circle"]


@pytest.fixture(scope="module")
def pixels():
    return as_tensor(smooth_images(3))  # [3, 3, 48, 40] in [0, 1]


def clip_logits(model, pixels, prompts):
    """transformers' own ``CLIPModel`` forward on the SPM's preprocessed pixels: the plain score."""
    tokens = model.tokenize(prompts)
    out = model.clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     pixel_values=model.transform(pixels))
    return out.logits_per_image.diagonal()


# ----------------------------------------------------------------------------------- the model
def test_an_untrained_spm_scores_as_its_clip_backbone_at_every_time(pixels):
    model = tiny_step_aware(seed=0)
    expected = clip_logits(model, pixels, PROMPTS)
    for t in (0.0, 0.3, 1.0):
        torch.testing.assert_close(model.score_noisy(pixels, PROMPTS, t), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score_noisy(pixels, PROMPTS, torch.tensor([0.0, 0.5, 0.9])), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score(pixels, PROMPTS), expected, atol=1e-5, rtol=0)  # the clean score: t = 0
    assert model.group_probs_noisy(pixels, "a cat", 0.4).sum().item() == pytest.approx(1.0)


def test_time_changes_the_score_once_the_adaln_weights_are_nonzero(pixels):
    model = tiny_step_aware(seed=0, time_std=0.5)
    early, late = model.score_noisy(pixels, PROMPTS, 0.1), model.score_noisy(pixels, PROMPTS, 0.9)
    assert (early - late).abs().min() > 1e-3
    assert model.score_noisy(pixels, PROMPTS, torch.tensor([0.1, 0.9, 0.1]))[1] == pytest.approx(late[1].item(), abs=1e-5)


def test_the_timestep_embedder_sees_the_ddpm_index_through_dit_sinusoids():
    model = tiny_step_aware(seed=0, time_std=0.5)
    t = torch.tensor([0.0, 0.25, 1.0])
    # DiT's timestep_embedding, written out: [cos, sin] of (t · 999) · exp(−ln(10⁴) · k / 128).
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = (t * 999)[:, None] * freqs[None]
    expected = model.time.embedder(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
    torch.testing.assert_close(model.time(t), expected)


def test_the_gates_and_the_pooled_shift_scale_sit_where_the_authors_put_them(pixels):
    model = tiny_step_aware(seed=0)
    width = model.clip.config.vision_config.hidden_size
    with torch.no_grad():
        for linear in model.time.layers:  # closing both gates (chunks 3 and 6) skips every layer
            linear.bias.zero_()
    vision, x = model.clip.vision_model, model.transform(pixels)
    skipped = vision.post_layernorm(vision.pre_layrnorm(vision.embeddings(x))[:, 0])
    expected = F.normalize(model.clip.visual_projection(skipped), dim=-1)
    torch.testing.assert_close(model.image_features(x, torch.full((3,), 0.5)), expected)
    with torch.no_grad():  # pooled (shift, scale): scale = −1 zeroes the pooled output, so the score is 0
        model.time.pooled.bias[width:] = -1.0
    assert model.score_noisy(pixels, PROMPTS, 0.5).abs().max().item() == 0.0


def test_the_tensor_preprocessing_is_the_authors_resize_crop_and_clamp(pixels):
    model = tiny_step_aware(seed=0)
    # 48 × 40 → shortest side 32: (int(48·0.8 + 0.5), 32) = (38, 32); torchvision's centre crop.
    from torchvision.transforms.functional import center_crop

    resized = F.interpolate(pixels, size=(38, 32), mode="bicubic", align_corners=False)
    expected = clip_normalise(center_crop(resized, [32, 32]).clamp(0, 1))
    torch.testing.assert_close(model.transform(pixels), expected)


def test_gradients_reach_the_time_conditioning_only_when_it_trains(pixels):
    model = tiny_step_aware(seed=0)
    assert not any(p.requires_grad for p in model.parameters())  # loaded frozen
    model.train_parameters("time")
    model.score_noisy(pixels, PROMPTS, 0.5).sum().backward()
    assert model.time.layers[0].weight.grad.abs().sum() > 0 and model.time.pooled.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())
    model.zero_grad(set_to_none=True)
    model.train_parameters("all")
    model.score_noisy(pixels, PROMPTS, 0.5).sum().backward()
    assert model.clip.visual_projection.weight.grad.abs().sum() > 0
    assert model.time.layers[1].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- loading
def test_save_pretrained_round_trip(tmp_path, pixels):
    model = tiny_step_aware(seed=1, time_std=0.5)
    model.save_pretrained(tmp_path / "spm")
    loaded = StepAwarePreferenceModel.from_pretrained(tmp_path / "spm")
    t = torch.tensor([0.0, 0.4, 0.8])
    torch.testing.assert_close(loaded.score_noisy(pixels, PROMPTS, t), model.score_noisy(pixels, PROMPTS, t), atol=0, rtol=0)


def test_from_pretrained_refuses_a_plain_clip_folder(tmp_path):
    with pytest.raises(RewardLoadError, match="from_clip"):
        StepAwarePreferenceModel.from_pretrained(save_tiny_clip(tmp_path / "clip"))


def test_the_authors_checkpoint_loads_and_scores_as_its_source(tmp_path, pixels):
    checkpoint, clip_source = save_tiny_step_aware_authors_layout(tmp_path, seed=3, time_std=0.5)
    loaded = StepAwarePreferenceModel.from_authors_checkpoint(checkpoint, clip_source)
    source = tiny_step_aware(seed=3, time_std=0.5)
    for t in (0.0, 0.25, 0.95):
        torch.testing.assert_close(loaded.score_noisy(pixels, PROMPTS, t), source.score_noisy(pixels, PROMPTS, t), atol=0, rtol=0)
    # a folder holding the released file name works too
    assert StepAwarePreferenceModel.from_authors_checkpoint(tmp_path, clip_source).score(pixels, PROMPTS).shape == (3,)


def test_the_key_map_names_and_round_trip(tmp_path):
    checkpoint, _ = save_tiny_step_aware_authors_layout(tmp_path)
    theirs = torch.load(checkpoint, weights_only=True)
    ours = authors_to_ours(theirs)
    for key, mapped in {
        "model.t_embedder.mlp.0.weight": "time.embedder.linear_1.weight",
        "model.t_embedder.mlp.2.bias": "time.embedder.linear_2.bias",
        "model.vision_model.encoder.layers.1.adaLN_modulation.1.weight": "time.layers.1.weight",
        "model.vision_model.adaLN_modulation.1.bias": "time.pooled.bias",
        "model.vision_model.encoder.layers.0.self_attn.q_proj.weight": "clip.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "model.logit_scale": "clip.logit_scale",
    }.items():
        assert torch.equal(ours[mapped], theirs[key])
    assert not any("position_ids" in key for key in ours)  # old transformers' buffers are dropped
    back = ours_to_authors(ours)
    assert set(back) == {k for k in theirs if not k.endswith("position_ids")}
    assert all(torch.equal(back[k], theirs[k]) for k in back)


def test_a_bad_checkpoint_names_the_keys(tmp_path):
    checkpoint, clip_source = save_tiny_step_aware_authors_layout(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    state["model.extra_head.weight"] = torch.zeros(2)
    torch.save(state, checkpoint)
    with pytest.raises(RewardLoadError, match="extra_head"):
        StepAwarePreferenceModel.from_authors_checkpoint(checkpoint, clip_source)
    del state["model.extra_head.weight"], state["model.t_embedder.mlp.0.weight"]
    torch.save(state, checkpoint)
    with pytest.raises(RewardLoadError, match=r"missing \['time.embedder.linear_1.weight'\]"):
        StepAwarePreferenceModel.from_authors_checkpoint(checkpoint, clip_source)
    with pytest.raises(RewardLoadError, match="sd-v1-5_step-aware_preference_model.bin"):
        StepAwarePreferenceModel.from_authors_checkpoint(tmp_path / "clip-config", clip_source)


# ----------------------------------------------------------------------------------- training
def test_the_pair_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    each = [math.log(1 + math.exp(-2)), 0.0,
            -0.5 * math.log(1 / (1 + math.exp(-1))) - 0.5 * math.log(1 / (1 + math.exp(1))) + math.log(0.5)]
    assert spm_pair_loss(logits, labels).item() == pytest.approx(sum(each) / 3, abs=1e-6)
    weights = torch.tensor([1.0, 1.0, 2.0])  # normalised to 1/4, 1/4, 1/2
    assert spm_pair_loss(logits, labels, weights).item() == pytest.approx(each[0] / 4 + each[2] / 2, abs=1e-6)


def test_labels_follow_the_ranks_and_ties():
    assert pair_labels({"ids": ["a", "b"], "ranks": torch.tensor([[0, 1], [0, 0]])}).tolist() == [[1.0, 0.0], [0.5, 0.5]]
    assert pair_labels({"ids": ["a"], "ranks": None}).tolist() == [[1.0, 0.0]]


def test_the_heldout_split_depends_only_on_the_ids():
    ids = [f"row{i}" for i in range(20)]
    train, held = split_heldout(ids, 0.25)
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    shuffled = ids[::-1]
    _, held_again = split_heldout(shuffled, 0.25)
    assert {shuffled[i] for i in held_again} == {ids[i] for i in held}
    assert split_heldout(ids, 0.0) == (list(range(20)), [])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny SD1.5 pipeline, a tiny CLIP to start from and ten 32 px pairs (every third a tie,
    two rows sharing a prompt)."""
    from diffalign.testing import save_tiny_pipeline, write_handmade_dataset

    root = tmp_path_factory.mktemp("spm")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        images = []
        for _ in range(2):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        rows.append({"id": f"p{i}", "prompt": "a red cat" if i < 2 else f"a blue dog {i}", "images": images,
                     "ranks": [0, 0] if i % 3 == 0 else [0, 1]})
    return {"base": save_tiny_pipeline("sd15", root / "sd15"), "clip": save_tiny_clip(root / "clip"),
            "data": write_handmade_dataset(root / "pairs", rows), "root": root}


def test_pixels_from_noisy_decodes_the_guided_one_step_estimate(tiny_setup):
    from diffalign.families import load

    family = load(tiny_setup["base"])
    unet, vae, scheduler = family.pipe.unet, family.pipe.vae, family.train_scheduler
    noisy = torch.randn(1, 2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500 / 999])
    cond, uncond = family.encode_prompts(["a cat"], group_size=2), family.encode_prompts([""], group_size=2)
    out = pixels_from_noisy(family, unet, noisy, t, cond, uncond, guidance=3.0)
    with torch.no_grad():  # by hand: ε = ε(∅) + 3·(ε(c) − ε(∅)); x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ at index 500
        flat = noisy[0]
        e_c = unet(flat, 500, encoder_hidden_states=cond.prompt_embeds[0]).sample
        e_u = unet(flat, 500, encoder_hidden_states=uncond.prompt_embeds[0]).sample
        abar = scheduler.alphas_cumprod[500]
        x0 = (flat - (1 - abar).sqrt() * (e_u + 3 * (e_c - e_u))) / abar.sqrt()
        expected = (vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1) / 2 + 0.5)
    assert out.shape == (1, 2, 3, 32, 32)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def _script():
    spec = importlib.util.spec_from_file_location("train_step_aware", ROOT / "reward_models" / "train_step_aware.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _steps(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "step" in line and "loss" in line]


def test_training_writes_accuracy_and_a_resumed_run_equals_an_uninterrupted_one(tiny_setup, capsys):
    root = tiny_setup["root"]
    args = ["--data", str(tiny_setup["data"]), "--base-model", str(tiny_setup["base"]), "--init", str(tiny_setup["clip"]),
            "--steps", "4", "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "1", "--resolution", "32",
            "--heldout-fraction", "0.2", "--checkpoint-every", "2", "--eval-batch-size", "4", "--eval-times", "0", "0.5", "0.9"]
    # uninterrupted, through the script
    assert _script().main(args + ["--out", str(root / "whole")]) == 0
    whole = root / "whole"
    assert "held-out pair accuracy at step 4" in capsys.readouterr().out
    report = json.loads((whole / "heldout_accuracy.json").read_text())
    assert report["pairs"] == 2 and set(report["accuracy"]) == {"0.0000", "0.5000", "0.9000"}
    assert all(0 <= a <= 1 for a in report["accuracy"].values())
    assert report["mean"] == pytest.approx(sum(report["accuracy"].values()) / 3)
    losses = [line["loss"] for line in _steps(whole)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    trained = StepAwarePreferenceModel.from_pretrained(whole / "final")
    start = StepAwarePreferenceModel.from_clip(tiny_setup["clip"])
    assert not torch.equal(trained.time.layers[0].weight, start.time.layers[0].weight)  # it trained

    # stopped after step 2, then resumed to 4
    config, _ = _script().parse(args + ["--out", str(root / "parts")])
    assert train_step_aware(config, stop_after=2, progress=False)["step"] == 2
    assert (root / "parts" / "checkpoints" / "checkpoint-0000002").is_dir() and not (root / "parts" / "final").exists()
    config.resume = "latest"
    train_step_aware(config, progress=False)
    parts = _steps(root / "parts")
    assert [line["step"] for line in parts] == [1, 2, 3, 4]  # nothing repeated, nothing skipped
    assert [line["loss"] for line in parts] == losses
    resumed = StepAwarePreferenceModel.from_pretrained(root / "parts" / "final")
    for (name, a), b in zip(trained.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert json.loads((root / "parts" / "heldout_accuracy.json").read_text())["accuracy"] == report["accuracy"]


def test_resume_refuses_other_settings(tiny_setup, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-0000002").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-0000002" / "trainer_state.json").write_text('{"step": 2}')
    config = SPMTrainConfig(data=str(tiny_setup["data"]), base_model=str(tiny_setup["base"]), out=str(out), resume="latest")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "batch_size": 3}))
    with pytest.raises(ValueError, match="batch_size"):
        train_step_aware(config)
