"""The models GenEval's rules look through: colour classifiers (CLIP zero-shot as GenEval's, or a
cheap pixel mean), the default detector (transformers' Mask2Former COCO-instance model, not the
paper's mmdet checkpoint, so results are labelled ``"GenEval (detector=…)"``), and the loaders
that pick one by name or ``module:factory``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffalign.evaluation.geneval_prompts import CLASSNAMES, COLORS
from diffalign.evaluation.geneval_rules import ColorClassifier, Detection, Detector


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
