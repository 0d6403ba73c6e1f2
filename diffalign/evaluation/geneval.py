"""GenEval (Ghosh et al. 2023, arXiv:2310.11513; code djghosh13/geneval): scoring a folder of
generated images, and the public names of its parts.

The parts, each usable alone:

- :mod:`~diffalign.evaluation.geneval_prompts`: :func:`generate_prompts`, our port of GenEval's
  prompt generator (its defaults give the published 553 prompts), and :func:`read_metadata` for
  the official ``evaluation_metadata.jsonl``;
- :mod:`~diffalign.evaluation.geneval_rules`: :func:`evaluate_image`, the correctness rules of
  ``evaluation/evaluate_images.py`` over :class:`Detection` objects, and :func:`summarise`, the
  per-tag means and the overall score (``evaluation/summary_scores.py``);
- :mod:`~diffalign.evaluation.geneval_models`: the pluggable detector (:class:`Detector`; default
  transformers' Mask2Former COCO-instance model, :class:`Mask2FormerDetector`, not the mmdet
  checkpoint of the paper, so results are labelled ``"GenEval (detector=…)"`` and are not equal
  to the paper's numbers) and colour classifiers.

:func:`score_folder` joins them over GenEval's folder layout. The names below stay importable
from here, as a detector or colour-classifier plugin imports :class:`Detection` from this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffalign.evaluation.geneval_models import (ClipColorClassifier, Mask2FormerDetector, MeanColorClassifier,
                                                 load_color_classifier, load_detector, load_plugin, masked_crop)
from diffalign.evaluation.geneval_prompts import (CLASSNAMES, COLORS, NUMBERS, POSITIONS, TAGS, MetadataError,
                                                  generate_prompts, read_metadata)
from diffalign.evaluation.geneval_rules import (ColorClassifier, Detection, Detector, Thresholds, evaluate_image,
                                                keep_confident, relative_position, summarise)


def score_folder(folder: str | Path, detector: Detector, colors: ColorClassifier | None,
                 thresholds: Thresholds = Thresholds(), progress: bool = False) -> list[dict]:
    """Evaluate every ``<folder>/<index>/samples/<k>.png`` against its ``metadata.jsonl`` (GenEval's layout).

    Returns:
        Rows ``{"prompt_index", "sample", "tag", "prompt", "correct", "reason", "details"}``; ``details``
        maps each kept class to its boxes.
    """
    import re

    from PIL import Image
    from tqdm.auto import tqdm

    folder = Path(folder)
    jobs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        metadata = json.loads((sub / "metadata.jsonl").read_text(encoding="utf-8"))
        for image_path in sorted((sub / "samples").iterdir()):
            if re.fullmatch(r"\d+\.png", image_path.name):
                jobs.append((int(sub.name), int(image_path.stem), image_path, metadata))
    rows = []
    for index, sample, image_path, metadata in tqdm(jobs, desc="GenEval", unit="image", disable=not progress):
        image = Image.open(image_path).convert("RGB")
        kept = keep_confident(detector.detect(image), metadata["tag"], thresholds)
        correct, reason = evaluate_image(image, kept, metadata, colors, thresholds.position_threshold)
        rows.append({"prompt_index": index, "sample": sample, "tag": metadata["tag"], "prompt": metadata["prompt"],
                     "correct": correct, "reason": reason,
                     "details": {k: [list(d.box) + [d.score] for d in v] for k, v in kept.items()}})
    return rows


__all__ = ["CLASSNAMES", "COLORS", "NUMBERS", "POSITIONS", "TAGS", "ClipColorClassifier", "ColorClassifier", "Detection",
           "Detector", "Mask2FormerDetector", "MeanColorClassifier", "MetadataError", "Thresholds", "evaluate_image",
           "generate_prompts", "keep_confident", "load_color_classifier", "load_detector", "load_plugin", "masked_crop",
           "read_metadata", "relative_position", "score_folder", "summarise"]
