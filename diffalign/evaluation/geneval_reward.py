"""GenEval as a reward for online RL: Flow-GRPO's partial score of one image against its GenEval
record, on GenEval's detections (:mod:`~diffalign.evaluation.geneval_rules`).

Flow-GRPO trains on ``score`` (``flow_grpo/rewards.py:210`` and ``:392`` at yifan123/flow_grpo
ac4c86e: ``all_scores += response_data["scores"]``, kept as ``score_details["geneval"]`` and
weighted into ``avg``), which its GenEval server computes in ``evaluate_reward``
(``reward_server/gen_eval.py:201-264`` at yifan123/reward-server 92ac29f): the mean of terms, over
the ``include`` clauses in order,

- count: ``1 − |n − found| / n`` with ``found`` *all* confident detections of the class (so more
  than ``2n`` of them makes it negative: the score is ≤ 1 but not ≥ 0);
- a wrong count on a clause that asks a colour or position: one more ``0``;
- colour (count right): ``1 − |n − hits| / n``, ``hits`` the objects classified that colour;
- position (count and colour right): ``0`` with no target group; else ``1`` when every object
  stands in the relation to every target, and ``0, 1`` when one does not (the server appends
  ``1.0`` after its loop whether or not the loop broke, ``gen_eval.py:254-258``; kept for parity).

``exclude`` clauses do not enter the score. The strict flag (GenEval's ``correct``, but with exact
counts and no excludes, ``gen_eval.py:220``) is Flow-GRPO's ``strict_accuracy``, logged, not trained
on. Unlike the server, images are not JPEG-compressed before detection.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from diffalign.errors import DiffalignError
from diffalign.evaluation.geneval_models import load_color_classifier, load_detector
from diffalign.evaluation.geneval_rules import ColorClassifier, Detection, Detector, Thresholds, keep_confident, relative_position


class GenEvalRewardError(DiffalignError, ValueError):
    """Images without usable GenEval records; says what to pass."""


def partial_score(image, detections: dict[str, list[Detection]], metadata: dict,
                  colors: ColorClassifier | None = None, margin: float = 0.1) -> tuple[float, bool]:
    """``(score, strict)`` of one image: Flow-GRPO's partial score (module docstring) and its strict flag.

    Args:
        image: the PIL image (only the colour classifier looks at it).
        detections: :func:`keep_confident`'s output, each class most confident first.
        metadata: a GenEval record (``include``; ``exclude`` is not read).
    """
    terms: list[float] = []
    groups: list[list[Detection] | None] = []
    strict = True
    for clause in metadata.get("include", []):
        found = detections.get(clause["class"], [])
        clause_terms, matched = _clause_terms(image, found, clause, groups, colors, margin)
        terms += clause_terms
        strict = strict and matched
        groups.append(found if matched else None)
    return (sum(terms) / len(terms) if terms else 0.0), strict


def _clause_terms(image, found: list[Detection], clause: dict, groups: list, colors, margin: float) -> tuple[list[float], bool]:
    """The terms one ``include`` clause adds, and whether it is met exactly."""
    count = clause["count"]
    terms = [1 - abs(count - len(found)) / count]
    if len(found) != count:
        return terms + ([0.0] if "color" in clause or "position" in clause else []), False
    matched = True
    if "color" in clause:
        if colors is None:
            raise GenEvalRewardError("this prompt asks for a colour: give the geneval reward a colour classifier")
        hits = colors.classify(image, found, clause["class"]).count(clause["color"])
        terms.append(1 - abs(count - hits) / count)
        matched = hits == count
    if "position" in clause and matched:
        relation, target = clause["position"]
        if groups[target] is None:
            return terms + [0.0], False
        matched = all(relation in relative_position(obj, other, margin) for obj in found for other in groups[target])
        terms += [1.0] if matched else [0.0, 1.0]  # the server's 1.0 after a broken loop (module docstring)
    return terms, matched


def to_pil(images: Tensor) -> list:
    """``[N, 3, H, W]`` in [0, 1] → ``N`` RGB PIL images, rounded as Flow-GRPO does (``rewards.py:192``)."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] != 3:
        raise GenEvalRewardError(f"the geneval reward scores images [N, 3, H, W], got {tuple(images.shape)}")
    arrays = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


class GenEvalReward:
    """Flow-GRPO's GenEval reward over a detector and a colour classifier (any that fit the protocols).

    Attributes:
        label: ``geneval``.
        detector_name: the detector's ``name`` (results depend on it: ours is not the paper's mmdet).
    """

    label = "geneval"
    media = "image"

    def __init__(self, detector: Detector, colors: ColorClassifier | None = None, thresholds: Thresholds = Thresholds()):
        self.detector, self.colors, self.thresholds = detector, colors, thresholds
        self.detector_name = getattr(detector, "name", type(detector).__name__)

    def score(self, images, prompts: Sequence[str], metadata: Sequence[dict] | None) -> Tensor:
        """``[N]`` float32 partial scores of ``images`` (``[N, 3, H, W]`` in [0, 1] or PIL) against
        ``metadata``, one GenEval record per image; ``prompts`` are not read (the record holds its own)."""
        return torch.tensor([score for score, _ in self.evaluate(images, metadata)], dtype=torch.float32)

    def evaluate(self, images, metadata: Sequence[dict] | None) -> list[tuple[float, bool]]:
        """``(score, strict)`` per image (see :func:`partial_score`)."""
        pils = to_pil(images) if isinstance(images, Tensor) else list(images)
        _check_metadata(metadata, len(pils))
        results = []
        for image, record in zip(pils, metadata):
            detections = keep_confident(self.detector.detect(image), record["tag"], self.thresholds)
            results.append(partial_score(image, detections, record, self.colors, self.thresholds.position_threshold))
        return results


def _check_metadata(metadata, count: int) -> None:
    if metadata is None or len(metadata) != count:
        given = "none" if metadata is None else len(metadata)
        raise GenEvalRewardError(
            f"the geneval reward needs one GenEval record per image ({count}), got {given}: pass metadata= the "
            "prompts' records (evaluation.geneval_prompts.generate_prompts or read_metadata give them)")
    for index, record in enumerate(metadata):
        if not isinstance(record, dict) or "tag" not in record or "include" not in record:
            raise GenEvalRewardError(f"metadata[{index}] is not a GenEval record with 'tag' and 'include': {record!r}")


def load_geneval_reward(path: str | None = None, device: str | torch.device = "cpu", detector: str = "mask2former",
                        colors: str = "clip", color_model: str | None = None) -> GenEvalReward:
    """The ``geneval`` member of an online reward (``rewards: [{name: geneval, path: …, options: {…}}]``).

    Args:
        path: the Mask2Former detector's hub id or folder (default its COCO-instance Swin-S);
            ignored by a plugin detector.
        detector: ``mask2former`` or a ``module:factory`` returning a :class:`Detector`.
        colors: ``clip`` (GenEval's), ``mean-rgb`` or a ``module:factory``.
        color_model: the CLIP model id or folder for ``colors=clip``.
    """
    device = str(device)
    return GenEvalReward(load_detector(detector, path, device), load_color_classifier(colors, color_model, device))


__all__ = ["GenEvalReward", "GenEvalRewardError", "load_geneval_reward", "partial_score", "to_pil"]
