"""The dual-caption builder (DCPO): a caption per image by each strategy, from tiny random
transformers models, resumable, and consumed by the DCPO objective."""

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffalign.builders import dual_captions
from diffalign.builders.dual_captions import build_dual_captions, word_change
from diffalign.cli import main
from diffalign.data import PreferenceDataset
from diffalign.data.writer import BuildError, ShardWriter

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
PROMPTS = ["a red cat", "a blue dog", "a green circle", "a red square"]


def _png(color) -> bytes:  # lossless, unlike pickapic_source.jpeg
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Four pairs of 32 × 32 images without captions."""
    writer = ShardWriter(tmp_path_factory.mktemp("src") / "pairs", builder="test", options={}, shard_size=2)
    for i, prompt in enumerate(PROMPTS):
        writer.add({"id": f"r{i}", "prompt": prompt, "images": [{"bytes": _png((60 * i, 200, 30)), "path": None},
                                                                {"bytes": _png((30, 60 * i, 200)), "path": None}],
                    "scores": [2.0, 1.0], "ranks": [0, 1], "captions": None, "source": "test", "meta": json.dumps({"k": i})})
        writer.advance(i + 1)
    writer.finish({"group_size": 2})
    return writer.root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random BLIP captioner and a tiny random T5, saved as transformers folders."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from diffalign.rewards.tiny import tiny_bert_tokenizer
    from diffalign.testing import save_tiny_t5

    root = tmp_path_factory.mktemp("caption-models")
    bert = tiny_bert_tokenizer()
    blip = BlipConfig(
        text_config=dict(vocab_size=len(bert), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, bos_token_id=bert.cls_token_id,
                         sep_token_id=bert.sep_token_id, eos_token_id=bert.sep_token_id, pad_token_id=bert.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(blip).save_pretrained(root / "blip")
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), bert).save_pretrained(root / "blip")
    save_tiny_t5(root / "t5")
    return {"captioner": str(root / "blip"), "text_model": str(root / "t5")}


def _blip_captions(path, images):
    """Unconditioned greedy captions straight from transformers (independent of the builder)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor, model = BlipProcessor.from_pretrained(path), BlipForConditionalGeneration.from_pretrained(path).eval()
    ids = model.generate(**processor(images=images, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    return [" ".join(t.split()).strip(" :,.") for t in processor.batch_decode(ids, skip_special_tokens=True)]


def test_captioning_describes_every_image(source, models, tmp_path):
    manifest = build_dual_captions(source, tmp_path / "c", strategy="captioning", captioner=models["captioner"],
                                   max_new_tokens=8, progress=False)
    rows, original = list(PreferenceDataset.open(tmp_path / "c")), list(PreferenceDataset.open(source))
    assert manifest["rows"] == 4 and manifest["group_size"] == 2
    for row, before in zip(rows, original):
        images = [Image.open(io.BytesIO(img["bytes"])).convert("RGB") for img in before["images"]]
        expected = [c or before["prompt"] for c in _blip_captions(models["captioner"], images)]
        assert row["captions"] == expected
        assert row["images"] == before["images"] and row["scores"] == before["scores"] and row["id"] == before["id"]
        meta = json.loads(row["meta"])
        assert meta["k"] == json.loads(before["meta"])["k"] and meta["dcpo"]["strategy"] == "captioning"


@pytest.mark.parametrize("strategy", ["perturbation", "hybrid"])
def test_perturbation_and_hybrid_keep_the_prompt_for_the_best_image(strategy, source, models, tmp_path):
    build_dual_captions(source, tmp_path / strategy, strategy=strategy, level="strong", max_new_tokens=8,
                        progress=False, **models)
    for row in PreferenceDataset.open(tmp_path / strategy):
        meta = json.loads(row["meta"])["dcpo"]
        assert row["captions"][0] == row["prompt"] and len(row["captions"]) == 2
        assert meta["level"] == "strong" and meta["change"][0] == 0.0
        assert meta["change"][1] == pytest.approx(word_change(row["prompt"], row["captions"][1]), abs=1e-4)


def test_word_change_and_missing_models(source, tmp_path):
    assert word_change("a red cat", "a red cat") == 0.0
    assert word_change("a red cat", "A RED dog") == pytest.approx(1 - 2 / 4)
    assert word_change("a red cat", "blue sky") == 1.0
    with pytest.raises(BuildError, match="needs a text model"):
        build_dual_captions(source, tmp_path / "x", strategy="hybrid", captioner="some/model")


def test_interrupted_build_resumes_with_the_same_rows(source, models, tmp_path, monkeypatch):
    options = dict(strategy="perturbation", level="medium", max_new_tokens=6, shard_size=1, progress=False, **models)
    straight = build_dual_captions(source, tmp_path / "straight", **options)
    real, calls = dual_captions.caption_row, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dual_captions, "caption_row", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_dual_captions(source, tmp_path / "resumed", **options)
    monkeypatch.setattr(dual_captions, "caption_row", real)
    resumed = build_dual_captions(source, tmp_path / "resumed", **options)
    assert list(PreferenceDataset.open(tmp_path / "resumed")) == list(PreferenceDataset.open(tmp_path / "straight"))
    assert resumed["counts"] == straight["counts"]


def test_dcpo_trains_one_step_on_the_output(source, models, tiny_path, tmp_path, capsys):
    assert main(["build", "dual-captions", str(source), "--out", str(tmp_path / "dc"), "--strategy", "hybrid",
                 "--captioner", models["captioner"], "--text-model", models["text_model"], "--level", "strong",
                 "--max-new-tokens", "8", "--no-progress"]) == 0
    args = ["train", "--config", str(CONFIGS / "tiny" / "dcpo.yaml"), f"model.path={tiny_path('sd15')}",
            f"data.path={tmp_path / 'dc'}", f"output_dir={tmp_path / 'run'}", "max_steps=1"]
    assert main(args) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    # Without captions DCPO refuses the data: the captions above are what it consumed.
    assert main([*args[:4], f"data.path={source}", f"output_dir={tmp_path / 'run2'}", "max_steps=1"]) == 1
