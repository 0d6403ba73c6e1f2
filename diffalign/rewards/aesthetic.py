"""LAION aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor,
``sac+logos+ava1-l14-linearMSE.pth``): a linear MLP on the unit-norm CLIP ViT-L/14 image
embedding, regressed on AVA/SAC/LOGOS ratings.

    score = MLP(image_embedding / ‖image_embedding‖)     (the AVA 1–10 rating scale)

The MLP is 768 → 1024 → 128 → 64 → 16 → 1 with dropouts (0.2, 0.2, 0.1) and no activations
(``simple_inference.py``); ImageReward reuses the same head on BLIP features. The backbone is
``openai/clip-vit-large-patch14`` (the OpenAI ViT-L/14 the original used through the ``clip``
package); preprocessing: shortest side → 224 (bicubic), centre crop (torchvision rounding),
OpenAI CLIP mean/std. The prompt is ignored.

Default weights: ``trl-lib/ddpo-aesthetic-predictor`` / ``aesthetic-model.pth``, the copy DDPO
(trl) loads into this MLP; a local ``sac+logos+ava1-l14-linearMSE.pth`` from the GitHub repo works too.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from diffalign.rewards.base import finish
from diffalign.rewards.clip import CLIPReward, load_clip_parts
from diffalign.rewards.loading import assign_state, find_file, load_checkpoint

HEAD_FILES = ("aesthetic-model.pth", "sac+logos+ava1-l14-linearMSE.pth")


class LinearMLPHead(nn.Module):
    """``[B, D] → [B]``: D → 1024 → 128 → 64 → 16 → 1, dropouts 0.2/0.2/0.1, no activations.

    The layer names (``layers.0``, ``layers.2``, ``layers.4``, ``layers.6``, ``layers.7``) are the
    original ``nn.Sequential``'s, so its state dicts load unchanged.
    """

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(-1)


class Aesthetic(CLIPReward):
    """LAION aesthetic predictor v2 on CLIP ViT-L/14 image embeddings (prompt-free)."""

    name = "aesthetic"
    default_id = "trl-lib/ddpo-aesthetic-predictor"
    default_backbone = "openai/clip-vit-large-patch14"
    uses_prompts = False

    def __init__(self, clip, transform, head: LinearMLPHead):
        super().__init__(clip, transform, tokenize=None)
        self.head = head

    @property
    def label(self) -> str:
        return "aesthetic_v2"

    def score_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        return self.head(self.image_features(pixels))

    def preference_logits_pixels(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        return self.score_pixels(pixels, prompts)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, backbone: str | os.PathLike | None = None,
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Aesthetic:
        """Load the MLP (a ``.pth`` file, a folder holding one of :data:`HEAD_FILES`, or a hub repo)
        and the CLIP backbone (hub id or ``CLIPModel`` folder with its processor)."""
        path = find_file(path_or_id or cls.default_id, HEAD_FILES, "aesthetic predictor")  # the small file first
        state = load_checkpoint(path)
        backbone = str(backbone or cls.default_backbone)
        clip, transform, _ = load_clip_parts(backbone, backbone, "aesthetic backbone", dtype,
                                             crop_offset="round", with_tokenizer=False)
        head = LinearMLPHead(state["layers.0.weight"].shape[1] if "layers.0.weight" in state else 768)
        assign_state(head, state, "aesthetic predictor", path)
        return finish(cls(clip, transform, head), dtype, device)
