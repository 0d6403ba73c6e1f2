"""The trainer, run through `diffalign train` on the tiny families and datasets."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import golden

from diffalign.cli import main
from diffalign.config import load_config
from diffalign.objectives import OBJECTIVES
from diffalign.training import Trainer, TrainingError
from diffalign.training.update import Updater

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
KINDS = ("sd15", "sdxl", "sd3")


def _train(tiny_path, data, out, objective, kind, *overrides, expect=0):
    args = ["train", "--config", str(CONFIGS / "tiny" / f"{objective}.yaml"), f"model.path={tiny_path(kind)}",
            f"data.path={data}", f"output_dir={out}", *overrides]
    assert main(args) == expect
    return out


def _data_for(objective, pair_data, ranked_data, expert_data=None):
    return {"rank_dpo": ranked_data, "diffusion_dro": expert_data}.get(objective, pair_data)


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# Full fine-tuning's frozen reference copy is trained with the denoising objectives; the inversion
# and SPO steps only add no-grad calls of the same two modules, so their objectives run under LoRA
# (CI budget). Diffusion-DRO's snapshot is a third copy under full fine-tuning, so it runs both.
# The online objectives (grpo, dance_grpo, diffusion_nft) sample their own images and log no errors: their three
# updates on every family are tests/training/test_online_configs.py's and test_online_training.py's.
THREE_STEP_RUNS = [(objective, kind, mode) for objective in sorted(OBJECTIVES)
                   if OBJECTIVES[objective].min_group_size > 0 for kind in KINDS
                   for mode in ("lora", "full")
                   if mode == "lora" or OBJECTIVES[objective].step in ("denoising", "diffusion_dro")]
SAMPLING_STEPS = ("spo", "diffusion_dro")


def _three_step_param(run):
    """The sampling objectives' SD1.5 LoRA runs are in the default suite; their other families and
    Diffusion-DRO's full fine-tuning are slow tests (CI budget: the family maths they use is the
    sampler's, tested on every family in tests/test_sampling.py)."""
    objective, kind, mode = run
    slow = OBJECTIVES[objective].step in SAMPLING_STEPS and (kind, mode) != ("sd15", "lora")
    return pytest.param(*run, id="-".join(run), marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("objective, kind, mode", [_three_step_param(run) for run in THREE_STEP_RUNS])
def test_three_steps_change_weights_and_log(objective, kind, mode, tiny_path, pair_data, ranked_data, expert_data,
                                            step_aware_model, tmp_path):
    extra = golden.overrides(objective, mode)
    if objective == "spo":  # any pair passes, so every step trains
        extra += [f"rollout.preference_model={step_aware_model}", "rollout.threshold=0.0"]
    sampling = objective in SAMPLING_STEPS
    if sampling:  # the last rollout saved as a grid at the validation interval
        extra.append("validation.every=3")
    data = _data_for(objective, pair_data, ranked_data, expert_data)
    out = _train(tiny_path, data, tmp_path / "run", objective, kind, *extra)
    if sampling:
        assert (out / "validation" / "rollouts-step-0000003.png").stat().st_size > 100
        assert all(r["time/rollout_s"] > 0 and r["time/train_s"] > 0 for r in _metrics(out))
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert math.isfinite(row["train/loss"]) and "train/err_w" in row
    if OBJECTIVES[objective].needs_reference:
        assert "train/ref_gap" in rows[0]
    weights = golden.trained_weights(out, kind, mode, tiny_path(kind))
    if mode == "lora":
        b_weights = [v for k, v in weights.items() if "lora_B" in k or "lora.up" in k]
        assert b_weights and any(v.abs().max() > 0 for v in b_weights)  # B starts at zero
    else:
        assert any(v.abs().max() > 0 for v in weights.values())
    if objective in golden.OBJECTIVES:
        assert golden.mismatches("/".join((objective, kind, mode)), [r["train/loss"] for r in rows],
                                 golden.fingerprint(weights)) == []


def test_the_golden_record_covers_every_run_of_the_five_objectives():
    recorded = json.loads(golden.GOLDEN.read_text())
    expected = {"/".join(run) for run in THREE_STEP_RUNS if run[0] in golden.OBJECTIVES}
    assert set(recorded) == expected == {"/".join(run) for run in golden.runs()} and len(expected) == 30


def test_a_changed_loss_fails_the_golden_check():
    """The check is exact where it can be and tight elsewhere: any recorded loss or fingerprint
    number changed by 1e-4 relative (3 times the tolerance) is reported, in either direction."""
    record = json.loads(golden.GOLDEN.read_text())
    for key, want in record.items():
        assert golden.mismatches(key, want["losses"], want["weights"]) == []
        for step in range(3):
            for sign in (1, -1):
                losses = list(want["losses"])
                losses[step] *= 1 + sign * 1e-4
                assert golden.mismatches(key, losses, want["weights"]), (key, step, sign)
        for i in range(2):
            weights = list(want["weights"])
            weights[i] += 1e-4 * want["weights"][1]
            assert golden.mismatches(key, want["losses"], weights), (key, i)
    assert record["diffusion_dpo/sd15/full"]["losses"][0] == golden.LOG_2 == 0.6931471824645996


@pytest.mark.parametrize("kind", (*KINDS, "sd35", "flux", "flux2", "qwen_image"))
def test_saved_lora_loads_in_the_pipeline(kind, tiny_path, pair_data, tmp_path):
    """The diffusers-format LoRA loads with ``load_lora_weights``; for the UNet families the kohya
    copy (ComfyUI/A1111 keys) loads too and gives the same images: the alpha (8, not the rank 4)
    survives the conversion. FLUX's kohya copy is written in BFL's fused layout."""
    from diffusers import DiffusionPipeline

    from diffalign.training.lora import KOHYA_FILE

    kohya = kind in ("sd15", "sdxl", "flux")
    extra = ["lora.formats=[diffusers,kohya]"] if kohya else []
    out = _train(tiny_path, pair_data, tmp_path / "run", "diffusion_dpo", kind, "optim.lr=5e-2", "max_steps=4",
                 "lora.rank=4", "lora.alpha=8", *extra)

    def sample(lora=None):
        pipe = DiffusionPipeline.from_pretrained(str(tiny_path(kind)))
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            pipe.load_lora_weights(str(lora))
            denoiser = getattr(pipe, "transformer", None) or pipe.unet
            scales = {scale for m in denoiser.modules() if isinstance(getattr(m, "scaling", None), dict)
                      for scale in m.scaling.values()}
            assert scales == {2.0}, scales  # alpha / rank = 8 / 4, as trained
        return pipe(prompt="a red cat", num_inference_steps=2, height=32, width=32, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    before, after = sample(), sample(out / "lora")
    assert (after - before).abs().max() > 1e-4
    assert (out / "lora" / KOHYA_FILE).exists() == kohya
    if kohya:
        keys = load_file(str(out / "lora" / KOHYA_FILE))
        assert all(k.startswith("lora_unet_") for k in keys)
    if kind == "flux":  # q, k, v fused (3 × 8) and to_out alone; its load is tests/families/test_flux.py's
        assert {float(v) for k, v in keys.items() if k.endswith(".alpha")} == {24.0, 8.0}
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    elif kohya:
        assert {float(v) for k, v in keys.items() if k.endswith(".alpha")} == {8.0}
        torch.testing.assert_close(sample(out / "lora" / KOHYA_FILE), after, rtol=0, atol=1e-5)


def test_kohya_format_is_refused_for_sd3_at_startup(tiny_path, pair_data, tmp_path, capsys):
    _train(tiny_path, pair_data, tmp_path / "run", "diffusion_dpo", "sd3", "lora.formats=[kohya]", expect=1)
    assert "lora.formats: kohya is written for the families with settled kohya keys (sd, sdxl, flux), not sd3" in capsys.readouterr().err


def _final_weights(out, lora: bool):
    if lora:
        return load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    return load_file(str(next((out / "final" / "unet").glob("*.safetensors"))))


class _Killed(Exception):
    pass


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_gives_the_same_weights(lora, tiny_path, pair_data, tmp_path, monkeypatch):
    common = ["max_steps=6", "checkpoint_every=3", "batch_size=1", "optim.lr=1e-2", "resume=latest",
              "objective.beta=500"] + ([] if lora else ["lora=null", "optim.lr=1e-3"])
    straight = _train(tiny_path, pair_data, tmp_path / "straight", "diffusion_dpo", "sd15", *common)

    calls = {"n": 0}
    original = Updater._optimizer_step

    def dying_step(self, bad):
        calls["n"] += 1
        if calls["n"] == 5:  # steps 4 and 5 run after the checkpoint at 3, then the process dies
            raise _Killed()
        return original(self, bad)

    monkeypatch.setattr(Updater, "_optimizer_step", dying_step)
    with pytest.raises(_Killed):
        _train(tiny_path, pair_data, tmp_path / "resumed", "diffusion_dpo", "sd15", *common)
    monkeypatch.setattr(Updater, "_optimizer_step", original)
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-0000003"]
    _train(tiny_path, pair_data, tmp_path / "resumed", "diffusion_dpo", "sd15", *common)

    a, b = _final_weights(straight, lora), _final_weights(tmp_path / "resumed", lora)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    # The resumed run logs steps 4..6 after the ones before the kill.
    assert [r["step"] for r in _metrics(tmp_path / "resumed")][-3:] == [4, 5, 6]


def test_loader_workers_give_the_same_run(tiny_path, tmp_path):
    """Worker processes decode the images; the run must not depend on them. Three epochs of
    random crops and flips: each epoch's ``set_epoch`` has to reach the workers."""
    from diffalign.testing import write_random_pairs

    data = write_random_pairs(tmp_path / "noise", pairs=4, resolution=40)  # larger than the 32 px crop
    common = ["max_steps=6", "batch_size=2", "data.random_flip=true", "data.center_crop=false"]
    inline = _train(tiny_path, data, tmp_path / "inline", "diffusion_dpo", "sd15", *common, "data.workers=0")
    forked = _train(tiny_path, data, tmp_path / "forked", "diffusion_dpo", "sd15", *common, "data.workers=2")
    a, b = _final_weights(inline, True), _final_weights(forked, True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "objective, dataset, message",
    [
        ("rank_dpo", "pair_data", "rank_dpo needs K ≥ 3 images per prompt; the dataset has pairs"),
        ("diffusion_dpo", "ranked_data", "diffusion_dpo needs K = 2 images per prompt; the dataset has groups of K = 3"),
        ("dcpo", "plain_pair_data", "dcpo needs a caption per image"),
    ],
)
def test_startup_checks_fail_before_any_model_loads(objective, dataset, message, request, tiny_path, tmp_path,
                                                    monkeypatch, capsys):
    import diffalign.families

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the start-up checks")

    monkeypatch.setattr(diffalign.families, "load", no_loading)
    data = request.getfixturevalue(dataset)
    _train(tiny_path, data, tmp_path / "run", objective, "sd15", expect=1)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["compile=false", "compile_memory_budget=0.5"], "compile_memory_budget: 0.5 needs compile: true"),
        (["compile=true", "compile_memory_budget=0"], "a value in (0, 1]"),
        (["compile=true", "compile_memory_budget=1.5"], "a value in (0, 1]"),
    ],
)
def test_compile_memory_budget_is_checked_at_startup(overrides, message, tiny_path, pair_data, tmp_path, capsys):
    _train(tiny_path, pair_data, tmp_path / "run", "diffusion_dpo", "sd15", *overrides, expect=1)
    assert message in capsys.readouterr().err


def test_compile_memory_budget_holds_only_while_the_steps_run(tiny_path, pair_data, tmp_path):
    """The model compiles lazily, at its first steps: the budget must be set then, and the
    process's own setting must come back after the run."""
    import torch._functorch.config as functorch_config

    from diffalign.training.setup import compiler_options

    before = functorch_config.activation_memory_budget
    config = load_config(CONFIGS / "tiny" / "diffusion_dpo.yaml",
                         [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", f"output_dir={tmp_path}",
                          "compile=true", "compile_memory_budget=0.3"])
    with compiler_options(config):
        assert functorch_config.activation_memory_budget == 0.3
    assert functorch_config.activation_memory_budget == before
    config.compile_memory_budget = None
    with compiler_options(config):
        assert functorch_config.activation_memory_budget == before


def test_reference_free_objectives_build_no_reference(tiny_path, pair_data, tmp_path):
    def trainer(objective, *overrides):
        config = load_config(CONFIGS / "tiny" / f"{objective}.yaml",
                             [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", f"output_dir={tmp_path}", *overrides])
        return Trainer(config)

    assert trainer("mapo").reference is None and trainer("sft").reference is None
    lora = trainer("diffusion_dpo")
    assert lora.reference.lora and lora.reference.module is lora.family.denoiser  # the policy itself, adapters disabled
    full = trainer("diffusion_dpo", "lora=null", "reference_pass=false")  # kept: the run computes it on the fly
    assert full.reference.module is not full.family.denoiser
    assert not any(p.requires_grad for p in full.reference.module.parameters())


def test_lora_reference_is_the_base_model(tiny_path, pair_data, tmp_path):
    from diffalign.families import load

    config = load_config(CONFIGS / "tiny" / "diffusion_dpo.yaml",
                         [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", f"output_dir={tmp_path}"])
    trainer = Trainer(config)
    for p in trainer.family.denoiser.parameters():  # move the adapters away from their zero init
        if p.requires_grad:
            p.data.normal_()
    base = load(tiny_path("sd15"))
    latents = torch.randn(1, 2, 4, 16, 16)
    cond = base.encode_prompts(["a red cat"], group_size=2)
    noise, t = base.sample_noise_and_time(latents, torch.Generator().manual_seed(0))
    with trainer.reference.active() as reference:
        ref_err = trainer.family.denoising_error(reference, latents, cond, noise, t)
    policy_err = trainer.family.denoising_error(trainer.family.denoiser, latents, cond, noise, t)
    base_err = base.denoising_error(base.denoiser, latents, cond, noise, t)
    torch.testing.assert_close(ref_err, base_err.detach())
    assert not torch.allclose(policy_err, base_err)


def test_nonfinite_steps_are_skipped_then_stop(tiny_path, pair_data, tmp_path, monkeypatch):
    from diffalign.objectives.sft import SFT

    original = SFT.loss
    calls = {"n": 0}

    def sometimes_nan(self, terms):
        calls["n"] += 1
        out = original(self, terms)
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SFT, "loss", sometimes_nan)
    out = _train(tiny_path, pair_data, tmp_path / "one-nan", "sft", "sd15", "max_steps=4")
    rows = _metrics(out)
    assert rows[-1]["skipped_steps"] == 1 and len(rows) == 4

    monkeypatch.setattr(SFT, "loss", lambda self, terms: type(original(self, terms))(
        loss=terms.policy_err.sum() * float("nan"), metrics={}))
    config = load_config(CONFIGS / "tiny" / "sft.yaml", [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}",
                                                         f"output_dir={tmp_path / 'all-nan'}", "max_steps=10",
                                                         "max_nonfinite_steps=3"])
    with pytest.raises(TrainingError, match="3 updates in a row"):
        Trainer(config).run()


class _InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward: a finite loss whose step must not be taken."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("max_grad_norm", ["1.0", "0"], ids=["clipped", "unclipped"])
def test_a_nonfinite_gradient_norm_skips_the_step(max_grad_norm, tiny_path, pair_data, tmp_path, monkeypatch):
    from diffalign.objectives.sft import SFT

    original, calls, seen = SFT.loss, {"n": 0}, []

    def infinite_second_step(self, terms):
        calls["n"] += 1
        out = original(self, terms)
        if calls["n"] == 2:
            out.loss = _InfiniteGradient.apply(out.loss)
        return out

    original_step = Updater._optimizer_step

    def recording_step(self, bad):
        trainable = list(self.clip_parameters())
        before = [p.detach().clone() for p in trainable]
        original_step(self, bad)
        seen.append(any(not torch.equal(a, p) for a, p in zip(before, trainable)))

    monkeypatch.setattr(SFT, "loss", infinite_second_step)
    monkeypatch.setattr(Updater, "_optimizer_step", recording_step)
    out = _train(tiny_path, pair_data, tmp_path / "run", "sft", "sd15", "max_steps=3", f"optim.max_grad_norm={max_grad_norm}")
    rows = _metrics(out)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    assert seen == [True, False, True]  # the step with the infinite gradient left the weights alone
    lora = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.isfinite(v).all() for v in lora.values())


def test_gradient_accumulation_and_validation_grid(tiny_path, pair_data, tmp_path):
    out = _train(tiny_path, pair_data, tmp_path / "run", "diffusion_dpo", "sd15", "gradient_accumulation_steps=2",
                 "batch_size=1", "max_steps=3", "validation.prompts=[a red cat,a blue dog]", "validation.every=2",
                 "validation.num_inference_steps=2", "logging.report_to=tensorboard")
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from PIL import Image

    grids = sorted(p.name for p in (out / "validation").iterdir())
    assert grids == ["step-0000002.png", "step-0000003.png"]
    assert Image.open(out / "validation" / grids[0]).size[0] >= 64  # two 32-px images side by side


def test_training_script_runs(tiny_path, pair_data, tmp_path, monkeypatch):
    """``training/train.py`` as ``python training/train.py …`` runs it (as ``__main__``, in this
    process: a subprocess would spend most of the test importing torch again)."""
    import runpy
    import sys

    script = Path(__file__).resolve().parents[2] / "training" / "train.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--config", str(CONFIGS / "tiny" / "sft.yaml"),
                                      f"model.path={tiny_path('sd15')}", f"data.path={pair_data}",
                                      f"output_dir={tmp_path / 'run'}", "max_steps=2"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(script), run_name="__main__")
    assert exited.value.code == 0
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind, mode", [("sdxl", "true"), ("sdxl", "regional"), ("sd3", "regional")])
def test_compile_switch_trains_the_same_steps(kind, mode, tiny_path, pair_data, tmp_path):
    """``compile: true`` (torch.compile of the denoiser, in place) and ``compile: regional`` (its
    repeated blocks: diffusers' ``_repeated_blocks`` for the UNet, the family's own list for
    SD3's transformer) give the eager run's losses; slow because inductor compiles the forward,
    the backward and the LoRA-disabled reference."""
    eager = _metrics(_train(tiny_path, pair_data, tmp_path / "eager", "diffusion_dpo", kind, "max_steps=2"))
    torch._dynamo.reset()
    compiled = _metrics(_train(tiny_path, pair_data, tmp_path / "compiled", "diffusion_dpo", kind, "max_steps=2",
                               f"compile={mode}"))
    assert [r["step"] for r in compiled] == [1, 2]
    for a, b in zip(eager, compiled):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_compile_memory_budget_recomputes_without_changing_the_steps(tiny_path, pair_data, tmp_path, monkeypatch):
    """Under a memory budget the compiler recomputes activations in backward: the same maths,
    so the eager run's losses, and the budget reaches the partitioner while the model compiles."""
    import torch._functorch.config as functorch_config
    import torch._inductor.compile_fx as compile_fx

    seen = []
    original = compile_fx.min_cut_rematerialization_partition

    def spy(*args, **kwargs):
        seen.append(functorch_config.activation_memory_budget)
        return original(*args, **kwargs)

    monkeypatch.setattr(compile_fx, "min_cut_rematerialization_partition", spy)
    # Warm caches (an earlier run, or an earlier test's graphs still held by dynamo) would skip
    # the partitioner this test watches.
    # (The config modules' own patch: monkeypatch's undo deletes their entries.)
    torch._dynamo.reset()
    eager = _metrics(_train(tiny_path, pair_data, tmp_path / "eager", "diffusion_dpo", "sdxl", "max_steps=2"))
    with functorch_config.patch(enable_autograd_cache=False), torch._inductor.config.patch(fx_graph_cache=False):
        budget = _metrics(_train(tiny_path, pair_data, tmp_path / "budget", "diffusion_dpo", "sdxl", "max_steps=2",
                                 "compile=true", "compile_memory_budget=0.5"))
    assert seen and set(seen) == {0.5}
    for a, b in zip(eager, budget, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-3, abs=1e-5)


def test_sft_trains_on_one_expert_image_per_prompt(tiny_path, expert_data, tmp_path):
    """SFT on experts (Diffusion-DRO's baseline): the same K = 1 dataset Diffusion-DRO takes."""
    rows = _metrics(_train(tiny_path, expert_data, tmp_path / "run", "sft", "sd15", "data.cache=false"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["train/loss"]) and "train/err_l" not in r for r in rows)
