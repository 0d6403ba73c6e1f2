"""GenEval (Ghosh et al. 2023, arXiv:2310.11513; code djghosh13/geneval): prompts, rules, scores.

Three parts, each usable alone:

- :func:`generate_prompts`: our port of GenEval's ``prompts/create_prompts.py``. With its
  defaults (seed 43, 100 draws per tag) it gives the published 553 prompts (single_object 80,
  two_object 99, counting 80, colors 94, position 100, color_attr 100). :func:`read_metadata`
  reads the official ``evaluation_metadata.jsonl`` instead.
- :func:`evaluate_image`: the correctness rules of ``evaluation/evaluate_images.py`` over
  detections (a :class:`Detection` per object: box ``[x1, y1, x2, y2]`` in pixels, score,
  optional boolean mask ``[H, W]``): includes are ANDed, excludes ORed; counting uses the
  0.9 threshold (0.3 otherwise), so with its ``exclude {count: N+1}`` it means *exactly* N;
  colours by a pluggable :class:`ColorClassifier` on masked crops; positions with the 0.1
  relative margin (:func:`relative_position`).
- :func:`summarise`: per-tag mean of ``correct`` and the overall score, the unweighted mean of
  the tag means (``evaluation/summary_scores.py``).

The detector is pluggable (:class:`Detector`: ``detect(image) -> list[Detection]``); the default
is transformers' Mask2Former COCO-instance model (:class:`Mask2FormerDetector`), not the mmdet
checkpoint of the paper, so results are labelled ``"GenEval (detector=…)"`` and are not equal to
the paper's numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from diffalign.errors import DiffalignError

# The 80 COCO classes in COCO order, with GenEval's spellings (prompts/object_names.txt).
CLASSNAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# ----------------------------------------------------------------------------- prompts
def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def _non_person(rng: np.random.Generator, size: int | None = None):
    """Class index(es) other than ``person``: draw from the 79 others, shifted past person's index."""
    person = CLASSNAMES.index("person")
    if size is None:
        return (int(rng.choice(len(CLASSNAMES) - 1)) + 1 + person) % len(CLASSNAMES)
    picks = rng.choice(len(CLASSNAMES) - 1, size=size, replace=False) + 1
    return [(int(i) + person) % len(CLASSNAMES) for i in picks]


def generate_prompts(seed: int = 43, n: int = 100, max_count: int = 4) -> list[dict]:
    """GenEval's evaluation metadata: every class once as ``single_object``, then ``n`` draws of each
    other tag, in order, from ``numpy.random.default_rng(seed)``; exact repeats dropped.

    Returns:
        Records ``{"tag", "include": [{"class", "count", "color"?, "position"?}], "exclude"?, "prompt"}``
        as in ``evaluation_metadata.jsonl`` (``position`` is ``[relation, group index]``).
    """
    rng = np.random.default_rng(seed)
    names = CLASSNAMES
    out = [{"tag": "single_object", "include": [{"class": names[i], "count": 1}], "prompt": f"a photo of {_article(names[i])}"}
           for i in rng.choice(len(names), size=len(names), replace=False)]
    for _ in range(n):
        a, b = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        out.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                    "prompt": f"a photo of {_article(a)} and {_article(b)}"})
    for _ in range(n):
        name = names[int(rng.choice(len(names)))]
        count = int(rng.integers(2, max_count, endpoint=True))
        out.append({"tag": "counting", "include": [{"class": name, "count": count}],
                    "exclude": [{"class": name, "count": count + 1}],
                    "prompt": f"a photo of {NUMBERS[count]} {_plural(name)}"})
    for _ in range(n):
        name = names[_non_person(rng)]
        color = COLORS[int(rng.choice(len(COLORS)))]
        out.append({"tag": "colors", "include": [{"class": name, "count": 1, "color": color}],
                    "prompt": f"a photo of {_article(color)} {name}"})
    for _ in range(n):
        a, b = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        relation = POSITIONS[int(rng.choice(len(POSITIONS)))]
        out.append({"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
                    "prompt": f"a photo of {_article(a)} {relation} {_article(b)}"})
    for _ in range(n):
        a, b = (names[i] for i in _non_person(rng, size=2))
        ca, cb = (COLORS[i] for i in rng.choice(len(COLORS), size=2, replace=False))
        out.append({"tag": "color_attr", "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                    "prompt": f"a photo of {_article(ca)} {a} and {_article(cb)} {b}"})
    seen, unique = set(), []
    for record in out:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


class MetadataError(DiffalignError, ValueError):
    """An ``evaluation_metadata.jsonl`` line that is not a GenEval record; names file and line."""


def read_metadata(path: str | Path) -> list[dict]:
    """The records of GenEval's ``evaluation_metadata.jsonl`` (one JSON object a line), checked."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"{path}: no such file")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetadataError(f"{path}:{number}: not JSON ({err})") from err
        if not isinstance(record, dict) or not {"tag", "include", "prompt"} <= set(record):
            raise MetadataError(f"{path}:{number}: a record needs 'tag', 'include' and 'prompt'")
        if record["tag"] not in TAGS:
            raise MetadataError(f"{path}:{number}: unknown tag {record['tag']!r}; GenEval's are {', '.join(TAGS)}")
        records.append(record)
    if not records:
        raise MetadataError(f"{path}: holds no records")
    return records


# ----------------------------------------------------------------------------- detections
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


# ----------------------------------------------------------------------------- colour classifiers
def masked_crop(image, obj: Detection, background: str = "#999999"):
    """The object pasted over a flat grey canvas through its mask (if any), cropped to its box."""
    from PIL import Image

    image = image.convert("RGB")
    if obj.mask is not None:
        mask = Image.fromarray(np.asarray(obj.mask, dtype=bool).astype(np.uint8) * 255)
        if mask.size != image.size:
            raise ValueError(f"mask {mask.size} does not match image {image.size}")
        image = Image.composite(image, Image.new("RGB", image.size, background), mask)
    return image.crop(tuple(int(round(v)) for v in obj.box))


# Reference RGB of each colour name for the pixel-mean classifier.
_RGB = {"red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 225, 30), "green": (40, 170, 50),
        "blue": (30, 60, 220), "purple": (130, 40, 170), "pink": (245, 150, 190), "brown": (120, 75, 35),
        "black": (15, 15, 15), "white": (240, 240, 240)}


class MeanColorClassifier:
    """The colour name nearest (RGB distance) to the mean of the object's mask pixels (box pixels
    without a mask). Cheap and deterministic; for tests and sanity checks, not GenEval's CLIP."""

    name = "mean-rgb"

    def classify(self, image, objects: Sequence[Detection], classname: str) -> list[str]:
        out = []
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
        for obj in objects:
            x1, y1, x2, y2 = (int(round(v)) for v in obj.box)
            region = np.zeros(pixels.shape[:2], dtype=bool)
            region[y1:y2, x1:x2] = True
            if obj.mask is not None:
                region &= np.asarray(obj.mask, dtype=bool)
            mean = pixels[region].mean(0) if region.any() else pixels.reshape(-1, 3).mean(0)
            out.append(min(COLORS, key=lambda c: float(((mean - np.array(_RGB[c])) ** 2).sum())))
        return out


class ClipColorClassifier:
    """GenEval's colour model: CLIP zero-shot over :data:`COLORS` on masked crops, text embeddings
    averaged over three templates per colour, one classifier cached per class. Default weights
    ``openai/clip-vit-large-patch14`` (the OpenAI ViT-L/14 GenEval loads through open_clip)."""

    TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")

    def __init__(self, model_id: str = "openai/clip-vit-large-patch14", device: str = "cpu", model=None, processor=None):
        from transformers import CLIPModel, CLIPProcessor

        self.model = (model or CLIPModel.from_pretrained(model_id)).to(device).eval()
        self.processor = processor or CLIPProcessor.from_pretrained(model_id)
        self.device, self.name, self._text = device, f"clip:{model_id}", {}

    def _classifier(self, classname: str):
        import torch

        from diffalign.rewards.clip import projected

        if classname not in self._text:
            texts = [t.format(c=c, cls=classname) for c in COLORS for t in self.TEMPLATES]
            tokens = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                emb = torch.nn.functional.normalize(projected(self.model.get_text_features(**tokens)), dim=-1)
            emb = emb.view(len(COLORS), len(self.TEMPLATES), -1).mean(1)
            self._text[classname] = torch.nn.functional.normalize(emb, dim=-1)  # [10, D]
        return self._text[classname]

    def classify(self, image, objects: Sequence[Detection], classname: str) -> list[str]:
        import torch

        from diffalign.rewards.clip import projected

        if not objects:
            return []
        crops = [masked_crop(image, obj) for obj in objects]
        pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            emb = torch.nn.functional.normalize(projected(self.model.get_image_features(pixel_values=pixels)), dim=-1)
        return [COLORS[i] for i in (emb @ self._classifier(classname).T).argmax(1).tolist()]


# ----------------------------------------------------------------------------- detectors
class Mask2FormerDetector:
    """transformers' Mask2Former COCO-instance model; boxes are the extents of the instance masks.

    Needs scipy (``pip install 'diffalign[eval]'``; transformers' Mask2Former imports it). Scores are
    ``post_process_instance_segmentation``'s (class probability × mean mask probability);
    it runs with a low threshold so that GenEval's 0.3 / 0.9 apply afterwards. Labels map to GenEval
    names by COCO index order (``config.id2label`` must have the 80 classes).
    """

    def __init__(self, model_id: str = "facebook/mask2former-swin-small-coco-instance", device: str = "cpu",
                 model=None, processor=None, threshold: float = 0.05):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.model = (model or Mask2FormerForUniversalSegmentation.from_pretrained(model_id)).to(device).eval()
        self.processor = processor or AutoImageProcessor.from_pretrained(model_id)
        if len(self.model.config.id2label) != len(CLASSNAMES):
            raise ValueError(f"{model_id}: expected the 80 COCO classes, the model has {len(self.model.config.id2label)}")
        source = model_id if model is None else (model.config.name_or_path or "custom")
        self.device, self.threshold, self.name = device, threshold, f"mask2former:{source}"

    def detect(self, image) -> list[Detection]:
        import torch

        image = image.convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.threshold, target_sizes=[image.size[::-1]], return_binary_maps=True)[0]
        found = []
        for mask, info in zip(result["segmentation"], result["segments_info"]):
            mask = mask.bool().cpu().numpy()
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            found.append(Detection(CLASSNAMES[int(info["label_id"])], box, float(info["score"]), mask))
        return found


def load_plugin(spec: str, **kwargs):
    """``"module:attribute"`` -> the attribute called with ``kwargs`` (a detector or colour classifier)."""
    import importlib

    module, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"{spec!r}: expected 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)(**kwargs)


def load_detector(spec: str = "mask2former", model_id: str | None = None, device: str = "cpu") -> Detector:
    """``mask2former`` (``model_id`` optional) or a ``module:factory`` returning a :class:`Detector`."""
    if spec == "mask2former":
        return Mask2FormerDetector(**({"model_id": model_id} if model_id else {}), device=device)
    return load_plugin(spec)


def load_color_classifier(spec: str = "clip", model_id: str | None = None, device: str = "cpu") -> ColorClassifier:
    """``clip`` (``model_id`` optional), ``mean-rgb``, or a ``module:factory``."""
    if spec == "clip":
        return ClipColorClassifier(**({"model_id": model_id} if model_id else {}), device=device)
    if spec == "mean-rgb":
        return MeanColorClassifier()
    return load_plugin(spec)


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
