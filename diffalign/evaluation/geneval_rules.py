"""GenEval's correctness rules (``evaluation/evaluate_images.py``) over detections, and its summary
(``evaluation/summary_scores.py``).

- :func:`keep_confident`: per class, the detections above GenEval's thresholds;
- :func:`evaluate_image`: includes are ANDed, excludes ORed; counting uses the 0.9 threshold
  (0.3 otherwise), so with its ``exclude {count: N+1}`` it means *exactly* N; colours by a
  pluggable :class:`ColorClassifier` on masked crops; positions with the 0.1 relative margin
  (:func:`relative_position`);
- :func:`summarise`: per-tag mean of ``correct`` and the overall score, the unweighted mean of
  the tag means.

A :class:`Detection` is one object (box ``[x1, y1, x2, y2]`` in pixels, score, optional boolean
mask ``[H, W]``); what finds and colours them is pluggable (:class:`Detector`,
:class:`ColorClassifier`; ours are in :mod:`~diffalign.evaluation.geneval_models`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


@dataclass
class Detection:
    """One detected object: ``label`` (a GenEval class name), ``box`` ``[x1, y1, x2, y2]`` in pixels,
    ``score`` in [0, 1], and optionally a boolean ``mask`` ``[H, W]`` of the whole image."""

    label: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = field(default=None, repr=False)


class Detector(Protocol):
    """``detect(image) -> list[Detection]`` for a PIL image; ``name`` labels the results."""

    name: str

    def detect(self, image) -> list[Detection]: ...


class ColorClassifier(Protocol):
    """``classify(image, objects, classname) -> list[str]``: one of :data:`COLORS` per object."""

    name: str

    def classify(self, image, objects: Sequence[Detection], classname: str) -> list[str]: ...


@dataclass(frozen=True)
class Thresholds:
    """GenEval's defaults (``evaluate_images.py`` ``--options``)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # 1 = no per-class suppression
    position_threshold: float = 0.1


def _iou(a, b) -> float:
    """IoU of two pixel-inclusive boxes, as GenEval computes it (+1 on widths and heights)."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def keep_confident(detections: Sequence[Detection], tag: str, thresholds: Thresholds = Thresholds()) -> dict[str, list[Detection]]:
    """Per class: the detections above the threshold (``counting_threshold`` for the counting tag;
    strictly greater), most confident first, at most ``max_objects``, then greedy IoU suppression
    when ``max_overlap < 1``."""
    limit = thresholds.counting_threshold if tag == "counting" else thresholds.threshold
    kept: dict[str, list[Detection]] = {}
    for label in dict.fromkeys(d.label for d in detections):
        ranked = sorted((d for d in detections if d.label == label and d.score > limit), key=lambda d: -d.score)
        ranked = ranked[: thresholds.max_objects]
        chosen = []
        while ranked:
            best = ranked.pop(0)
            chosen.append(best)
            if thresholds.max_overlap < 1:
                ranked = [d for d in ranked if _iou(best.box, d.box) < thresholds.max_overlap]
        if chosen:
            kept[label] = chosen
    return kept


def relative_position(a: Detection, b: Detection, margin: float = 0.1) -> set[str]:
    """Where ``a`` is relative to ``b``: a subset of :data:`POSITIONS` (image y points down).

    The centre offset ``d = c_a − c_b`` is shrunk per axis by ``margin · (size_a + size_b)``
    (floored at 0, sign kept); if nothing is left the objects overlap within the margin and there
    is no relation. Otherwise the shrunk offset over ``‖d‖`` gives (dx, dy), and a relation holds
    where its component passes ±0.5.
    """
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = centre_a - centre_b
    shrunk = np.maximum(np.abs(offset) - margin * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate_image(image, detections: dict[str, list[Detection]], metadata: dict,
                   colors: ColorClassifier | None = None, margin: float = 0.1) -> tuple[bool, str]:
    """``(correct, reason)`` of one image under GenEval's rules.

    Args:
        image: the PIL image (only the colour classifier looks at it).
        detections: :func:`keep_confident`'s output, each class most confident first.
        metadata: a GenEval record (``include``, optional ``exclude``).
        colors: needed when a clause asks for a colour.
    """
    correct, reasons, groups = True, [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = detections.get(name, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        if matched and "color" in clause:
            if colors is None:
                raise ValueError("this prompt asks for a colour: give a colour classifier")
            predicted = colors.classify(image, found, name)
            hits = predicted.count(clause["color"])
            if hits < count:
                matched = False
                reasons.append(f"expected {clause['color']} {name}>={count}, found {hits} {clause['color']} "
                               f"(colours: {', '.join(predicted)})")
        if matched and "position" in clause:
            relation, target = clause["position"]
            if groups[target] is None:
                matched = False
                reasons.append(f"no target for {name} to be {relation}")
            else:
                for obj in found:
                    failing = next((t for t in groups[target] if relation not in relative_position(obj, t, margin)), None)
                    if failing is not None:
                        got = relative_position(obj, failing, margin)
                        matched = False
                        reasons.append(f"expected {name} {relation} target, found {' and '.join(sorted(got)) or 'no relation'}")
                        break
        correct = correct and matched
        groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        found = detections.get(clause["class"], [])
        if len(found) >= clause["count"]:
            correct = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {len(found)}")
    return correct, "\n".join(reasons)


def summarise(rows: Sequence[dict]) -> dict:
    """GenEval's summary of result rows ``{"tag", "correct", "prompt_index"?}``.

    Returns:
        ``{"tags": {tag: mean correct}, "overall": mean of the tag means, "images": fraction of
        images correct, "prompts": fraction of prompts with at least one correct image, "n": rows}``.
    """
    if not rows:
        raise ValueError("no GenEval results to summarise")
    tags = {}
    for tag in dict.fromkeys(r["tag"] for r in rows):
        values = [bool(r["correct"]) for r in rows if r["tag"] == tag]
        tags[tag] = sum(values) / len(values)
    by_prompt: dict = {}
    for r in rows:
        key = r.get("prompt_index", r.get("prompt"))
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    return {"tags": tags, "overall": sum(tags.values()) / len(tags),
            "images": sum(bool(r["correct"]) for r in rows) / len(rows),
            "prompts": sum(by_prompt.values()) / len(by_prompt), "n": len(rows)}
