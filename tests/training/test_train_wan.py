"""Training the Wan family on video pairs through `diffalign train`: 3 steps of Diffusion-DPO and
MaPO (LoRA and full), the LoRA in diffusers' WanPipeline, cached = uncached, clear errors."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.cli import main
from diffalign.testing import TINY_FRAMES, write_random_video_pairs

pytest.importorskip("av")
CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "video"


@pytest.fixture(scope="module")
def video_pairs(tmp_path_factory):
    return write_random_video_pairs(tmp_path_factory.mktemp("video") / "pairs", pairs=4, resolution=32)


def _train(tiny_path, data, out, objective, *overrides, expect=0, kind="wan"):
    args = ["train", "--config", str(CONFIGS / f"{objective}.yaml"), f"model.path={tiny_path(kind)}",
            f"data.path={data}", f"output_dir={out}", *overrides]
    assert main(args) == expect
    return out


def _losses(out):
    return [json.loads(line)["train/loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


WAN22 = [pytest.param("wan22", marks=pytest.mark.slow), pytest.param("wan22_ti2v", marks=pytest.mark.slow)]
"""Wan 2.2's tiny pipelines (A14B's two experts, TI2V-5B): their default-suite runs are
tests/families/test_wan22.py's and :func:`test_wan22_trains_every_video_objective`'s."""


@pytest.mark.parametrize("kind", ["wan", *WAN22])
@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("objective", ["diffusion_dpo", "mapo"])
def test_three_steps_on_video_pairs(objective, mode, kind, tiny_path, video_pairs, tmp_path):
    extra = ["data.cache=false"] + (["lora=null", "optim.lr=1e-3"] if mode == "full" else [])
    out = _train(tiny_path, video_pairs, tmp_path / "run", objective, *extra, kind=kind)
    losses = _losses(out)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    if mode == "lora":
        lora = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
        assert any(("lora_B" in k or "lora.up" in k) and v.abs().max() > 0 for k, v in lora.items())  # B starts at 0
        assert all(k.startswith("transformer.") for k in lora)
    else:
        for component in ("transformer", "transformer_2") if kind == "wan22" else ("transformer",):
            trained = load_file(str(next((out / "final" / component).glob("*.safetensors"))))
            base = load_file(str(next((tiny_path(kind) / component).glob("*.safetensors"))))
            assert trained.keys() == base.keys() and any(not torch.equal(trained[k], base[k]) for k in base)


def _rewritten(source, folder, rows):
    """A copy of the video dataset ``source`` with each row passed through ``rows(row) -> row``."""
    from diffalign.data import PreferenceDataset
    from diffalign.data.writer import ShardWriter

    writer = ShardWriter(folder, builder="test", options={}, overwrite=True)
    k = None
    for i, row in enumerate(PreferenceDataset.open(source)):
        row = rows(row)
        k = len(row["images"])
        writer.add(row)
        writer.advance(i + 1)
    writer.finish({"group_size": k, "media": "video"})
    return folder


@pytest.mark.parametrize("kind", ["wan22", pytest.param("wan22_ti2v", marks=pytest.mark.slow)])
def test_wan22_trains_every_video_objective(kind, tiny_path, video_pairs, tmp_path):
    """Wan 2.2 (both experts of A14B; TI2V-5B) under each objective that takes video preference
    data, LoRA, 3 steps: the denoising ones (DCPO on captioned clips, RankDPO on groups of three),
    InPO's and SmPO's inversion, Diffusion-DRO's rollouts (the preferred clip of each pair as its
    expert); and Diffusion-DPO and MaPO under full fine-tuning (tests/training/test_train_wan.py's
    three-step runs). SPO is refused for video (its step-aware model scores images)."""
    experts = _rewritten(video_pairs, tmp_path / "experts",
                         lambda row: {**row, "images": row["images"][:1], "scores": None, "ranks": None})
    captioned = _rewritten(video_pairs, tmp_path / "captioned", lambda row: {
        **row, "captions": [f"{row['prompt']}, bright", f"{row['prompt']}, dim"]})
    ranked = _rewritten(video_pairs, tmp_path / "ranked", lambda row: {
        **row, "images": [row["images"][0], row["images"][1], row["images"][0]], "scores": [1.0, 0.0, 0.5],
        "ranks": [0, 2, 1]})
    runs = [("diffusion_dpo", CONFIGS / "diffusion_dpo.yaml", video_pairs, ["lora=null", "optim.lr=1e-3"]),
            ("sft", CONFIGS.parent / "sft.yaml", video_pairs, []),
            ("dcpo", CONFIGS.parent / "dcpo.yaml", captioned, []),
            ("rank_dpo", CONFIGS.parent / "rank_dpo.yaml", ranked, []),
            ("inpo", CONFIGS.parent / "inpo.yaml", video_pairs, []),
            ("smpo", CONFIGS.parent / "smpo.yaml", video_pairs, []),
            ("diffusion_dro", CONFIGS.parent / "diffusion_dro.yaml", experts, [])]
    for objective, config, data, extra in runs:
        out = tmp_path / objective
        assert main(["train", "--config", str(config), f"model.path={tiny_path(kind)}", f"data.path={data}",
                     f"data.frames={TINY_FRAMES}", "data.cache=false", f"output_dir={out}", *extra]) == 0, objective
        losses = _losses(out)
        assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), objective


@pytest.mark.parametrize("objective", ["inpo", "smpo"])
def test_the_inversion_objectives_train_on_video_pairs(objective, tiny_path, video_pairs, tmp_path):
    """Inversion is rank-generic: InPO and SmPO invert clip latents as they do image latents."""
    config = CONFIGS.parent / f"{objective}.yaml"  # the image tiny config, pointed at clips
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), f"model.path={tiny_path('wan')}", f"data.path={video_pairs}",
                 "data.frames=5", "data.cache=false", f"output_dir={out}"]) == 0
    losses = _losses(out)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    lora = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert any(("lora_B" in k or "lora.up" in k) and v.abs().max() > 0 for k, v in lora.items())


def test_diffusion_dro_rolls_out_clips(tiny_path, video_pairs, tmp_path):
    """Diffusion-DRO's rollouts are clips as long as the data's; its grid shows their first frames."""
    from diffalign.data import PreferenceDataset
    from diffalign.data.writer import ShardWriter

    writer = ShardWriter(tmp_path / "experts", builder="test", options={}, overwrite=True)
    for i, row in enumerate(PreferenceDataset.open(video_pairs)):  # the preferred clip of each pair, K = 1
        writer.add({**row, "images": row["images"][:1], "scores": None, "ranks": None})
        writer.advance(i + 1)
    writer.finish({"group_size": 1, "media": "video"})
    out = tmp_path / "run"
    assert main(["train", "--config", str(CONFIGS.parent / "diffusion_dro.yaml"), f"model.path={tiny_path('wan')}",
                 f"data.path={tmp_path / 'experts'}", "data.frames=5", "validation.every=3", f"output_dir={out}"]) == 0
    assert len(_losses(out)) == 3 and (out / "validation" / "rollouts-step-0000003.png").stat().st_size > 100


def test_spo_is_refused_for_wan(tiny_path, video_pairs, tmp_path, capsys):
    assert main(["train", "--config", str(CONFIGS.parent / "spo.yaml"), f"model.path={tiny_path('wan')}",
                 f"data.path={video_pairs}", "data.frames=5", f"output_dir={tmp_path / 'run'}"]) == 1
    assert "spo does not support the wan family" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["wan", "wan22_ti2v"])
def test_saved_lora_loads_into_the_wan_pipeline(kind, tiny_path, video_pairs, tmp_path):
    """diffusers' ``WanPipeline.load_lora_weights`` reads the LoRA (alpha/rank kept) and its videos
    change (Wan 2.1, and TI2V-5B's one transformer; A14B's two are tests/families/test_wan22.py's)."""
    from diffusers import WanPipeline

    out = _train(tiny_path, video_pairs, tmp_path / "run", "diffusion_dpo", "optim.lr=5e-2", "max_steps=4",
                 "lora.rank=4", "lora.alpha=8", "data.cache=false", kind=kind)  # one cache per family and size

    def sample(lora=None):
        pipe = WanPipeline.from_pretrained(str(tiny_path(kind)))
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            pipe.load_lora_weights(str(lora))
            scales = {s for m in pipe.transformer.modules() if isinstance(getattr(m, "scaling", None), dict)
                      for s in m.scaling.values()}
            assert scales == {2.0}, scales  # alpha / rank = 8 / 4, as trained
        return pipe("a red cat", num_frames=TINY_FRAMES, height=32, width=32, num_inference_steps=2,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).frames

    before, after = sample(), sample(out / "lora")
    assert before.shape == (1, TINY_FRAMES, 3, 32, 32)
    assert (after - before).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["wan", "wan22", "wan22_ti2v"])
def test_cached_training_equals_uncached(kind, tiny_path, tmp_path, capsys):
    """The latent cache of clips serves the same training: the same losses to 1e-5. With oneDNN they
    are bit-identical; PyTorch's own 3-D convolutions (oneDNN off) round the cache's batches of
    clips differently from training's, which β/2 amplifies: at the tiny config's β = 500 the losses
    differed by 2.1e-5 relative, at β = 50 by 2.2e-6 (1 and 2 threads alike)."""
    video_pairs = write_random_video_pairs(tmp_path / "pairs", pairs=4, resolution=32, seed=3)
    beta = "objective.beta=50"
    uncached = _losses(_train(tiny_path, video_pairs, tmp_path / "uncached", "diffusion_dpo", "data.cache=false", beta,
                              kind=kind))
    cached_run = _train(tiny_path, video_pairs, tmp_path / "cached", "diffusion_dpo", "data.cache=auto", beta, kind=kind)
    assert "latent cache: building" in capsys.readouterr().out
    assert (video_pairs / "cache" / f"wan-32-{TINY_FRAMES}f" / "cache.json").is_file()
    assert _losses(cached_run) == pytest.approx(uncached, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["data.frames=6"], "data.frames: 6 frames cannot be encoded: the Wan VAE needs 1 \\+ 4·n frames"),
    (["data.frames=null"], "data.frames: .* holds videos; say how many frames"),
])
def test_bad_frame_counts_are_refused_before_loading(overrides, message, tiny_path, video_pairs, tmp_path, capsys):
    _train(tiny_path, video_pairs, tmp_path / "run", "diffusion_dpo", *overrides, expect=1)
    assert re.search(message, capsys.readouterr().err)


def test_image_data_for_a_video_model_is_refused(tiny_path, tmp_path, capsys):
    from diffalign.testing import write_random_pairs

    images = write_random_pairs(tmp_path / "images", pairs=2, resolution=32)
    _train(tiny_path, images, tmp_path / "run", "diffusion_dpo", expect=1)
    assert "holds images, and the wan family trains on videos" in capsys.readouterr().err


def test_a_missing_video_extra_is_named_before_loading(tiny_path, video_pairs, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    _train(tiny_path, video_pairs, tmp_path / "run", "diffusion_dpo", expect=1)
    assert "pip install 'diffalign[video]'" in capsys.readouterr().err


def test_unreadable_clips_are_skipped_and_counted(tiny_path, tmp_path):
    """A clip that cannot be decoded drops its group from the batch, counted in the metrics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffalign.data.schema import arrow_schema

    data = write_random_video_pairs(tmp_path / "pairs", pairs=4, resolution=32, seed=4)
    shard = next((data / "data").glob("*.parquet"))
    table = pq.read_table(shard).to_pylist()
    table[1]["images"][0]["bytes"] = b"not a video"
    pq.write_table(pa.Table.from_pylist(table, schema=arrow_schema()), shard)
    out = _train(tiny_path, data, tmp_path / "run", "diffusion_dpo", "data.cache=false", "max_steps=2")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_groups"] == 1  # 2 steps of 2 groups see each of the 4 groups once


@pytest.mark.slow
def test_two_processes_train_video_pairs_as_one(tiny_path, video_pairs, tmp_path):
    """Two CPU processes (gloo), one clip pair each, give the run of one process with both."""
    import shutil
    import subprocess

    common = ["--config", str(CONFIGS / "diffusion_dpo.yaml"), f"model.path={tiny_path('wan')}",
              f"data.path={video_pairs}", "data.cache=false", "lora=null", "max_steps=2"]
    assert main(["train", *common, f"output_dir={tmp_path / 'one'}", "batch_size=2"]) == 0
    subprocess.run([shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                    "0", "-m", "diffalign", "train", *common, f"output_dir={tmp_path / 'two'}", "batch_size=1"],
                   check=True, timeout=600, capture_output=True)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(two) == 2 and two == pytest.approx(one, abs=2e-4)
    wa = load_file(str(next((tmp_path / "one" / "final" / "transformer").glob("*.safetensors"))))
    wb = load_file(str(next((tmp_path / "two" / "final" / "transformer").glob("*.safetensors"))))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-4
