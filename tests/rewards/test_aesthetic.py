"""LAION aesthetic predictor v2: the original ``.pth`` (an ``nn.Sequential`` state dict) loads,
and the score is the MLP of the unit-norm CLIP image embedding."""

import pytest
import torch
from reward_images import as_tensor, clip_normalise, smooth_images
from torch import nn

from diffalign.rewards import Aesthetic, RewardLoadError


class _OriginalMLP(nn.Module):
    """simple_inference.py's MLP: ``self.layers``, Linear/Dropout pairs, no activations."""

    def __init__(self, in_features: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(nn.Linear(in_features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
        self.eval()

    def forward(self, x):
        return self.layers(x)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(_OriginalMLP(16).state_dict(), path)
    return path


def test_original_weights_load_and_score_the_normalised_embedding(head_file, tiny_clip_dir):
    reward = Aesthetic.from_pretrained(head_file, backbone=tiny_clip_dir)
    pixels = as_tensor(smooth_images(3, 32, 32))
    with torch.no_grad():
        embedding = reward.clip.get_image_features(pixel_values=clip_normalise(pixels)).pooler_output
        expected = _OriginalMLP(16)(embedding / embedding.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(reward.score(pixels), expected, atol=1e-5)
    assert reward.label == "aesthetic_v2" and not reward.uses_prompts


def test_a_folder_holding_the_file_works_too(head_file, tiny_clip_dir):
    reward = Aesthetic.from_pretrained(head_file.parent, backbone=tiny_clip_dir)
    assert reward.score(smooth_images(2)).shape == (2,)


def test_torchvision_crop_rounding(head_file, tiny_clip_dir):
    # The original preprocessing is torchvision's CenterCrop (round), not transformers' (floor).
    assert Aesthetic.from_pretrained(head_file, backbone=tiny_clip_dir).transform.crop_offset == "round"


def test_missing_head_is_named(tmp_path, tiny_clip_dir):
    with pytest.raises(RewardLoadError, match=r"aesthetic-model\.pth.*sac\+logos\+ava1-l14-linearMSE\.pth.*" + str(tmp_path)):
        Aesthetic.from_pretrained(tmp_path, backbone=tiny_clip_dir)
