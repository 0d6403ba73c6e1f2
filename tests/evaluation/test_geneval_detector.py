"""The Mask2Former detector's plumbing on a tiny random model (its detections mean nothing)."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.evaluation.geneval_models import Mask2FormerDetector
from diffalign.evaluation.geneval_prompts import CLASSNAMES
from diffalign.evaluation.geneval_rules import Thresholds, keep_confident

pytest.importorskip("scipy", reason="transformers' Mask2Former needs scipy (pip install 'diffalign[eval]')")


def tiny_detector(labels):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=len(labels), id2label=dict(enumerate(labels)),
                               label2id={n: i for i, n in enumerate(labels)}, hidden_dim=32, mask_feature_size=32,
                               feature_size=32, num_queries=10, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=64, encoder_feedforward_dim=64)
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    processor = Mask2FormerImageProcessor(size={"height": 64, "width": 64})
    return Mask2FormerDetector(model=model, processor=processor, threshold=0.0)


def test_boxes_are_mask_extents_and_labels_are_geneval_names():
    detector = tiny_detector(CLASSNAMES)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    found = detector.detect(image)
    assert found
    for d in found:
        assert d.label in CLASSNAMES and 0.0 <= d.score <= 1.0
        assert d.mask.shape == (40, 48) and d.mask.dtype == bool
        ys, xs = np.nonzero(d.mask)
        assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    kept = keep_confident(found, "single_object", Thresholds(threshold=0.0))
    assert sum(len(v) for v in kept.values()) == len([d for d in found if d.score > 0])
    assert detector.name.startswith("mask2former:")


def test_needs_the_80_coco_classes():
    with pytest.raises(ValueError, match="80 COCO classes"):
        tiny_detector(["cat", "dog"])


def test_evaluate_with_the_default_detector_and_clip_colours(tiny_path, tmp_path):
    """`diffalign evaluate` through the default classes, loaded from folders: Mask2Former + CLIP colours."""
    import json

    from diffalign.cli import main
    from diffalign.rewards.tiny import save_tiny_clip

    detector = tiny_detector(CLASSNAMES)
    detector.model.save_pretrained(tmp_path / "m2f")
    detector.processor.save_pretrained(tmp_path / "m2f")
    save_tiny_clip(tmp_path / "clip")
    metadata = tmp_path / "evaluation_metadata.jsonl"
    records = [{"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
               {"tag": "position", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1,
                                                "position": ["left of", 0]}], "prompt": "a photo of a dog left of a cat"}]
    metadata.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "out"
    assert main(["evaluate", "--base", str(tiny_path("sd15")), "--prompts", str(metadata), "--out", str(out),
                 "--samples", "1", "--steps", "2", "--height", "32", "--width", "32", "--detector-model",
                 str(tmp_path / "m2f"), "--color-model", str(tmp_path / "clip"), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    geneval = results["geneval"]
    assert geneval["label"].startswith("GenEval (detector=mask2former:") and geneval["color_classifier"].startswith("clip:")
    assert set(geneval["base"]["tags"]) == {"colors", "position"} and results["rewards"] == {}
    assert "correct fraction" in results["deltas"]["reward"]
