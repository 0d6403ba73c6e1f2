"""Image preprocessing: geometry, normalisation, and how far the PIL and tensor paths differ."""

import pytest
import torch
from reward_images import as_tensor, clip_normalise, smooth_images

from diffalign.rewards.preprocess import (
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, resized_shortest, transform_from_processor,
)


def test_openai_clip_statistics():
    # The constants of OpenAI CLIP's preprocessing (clip/clip.py `_transform`).
    assert OPENAI_CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert OPENAI_CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_an_image_of_the_output_size_is_only_normalised():
    pixels = torch.rand(2, 3, 32, 32)
    for fit in ("crop", "pad"):
        assert torch.allclose(ImageTransform(32, fit=fit)(pixels), clip_normalise(pixels), atol=1e-6)


def test_shortest_side_sizes():
    # transformers and torchvision both truncate the long side: 32 · 48 / 40 = 38.4 -> 38.
    assert resized_shortest(48, 40, 32) == (38, 32)
    assert resized_shortest(40, 48, 32) == (32, 38)
    assert resized_shortest(20, 70, 32) == (32, 112)


@pytest.mark.parametrize("offset, first_column", [("floor", 1), ("round", 2)])
def test_centre_crop_rounding(offset, first_column):
    # 32 × 35 leaves 3 columns of slack: transformers crops from column 1, torchvision from round(1.5) = 2.
    ramp = torch.arange(35.0).expand(1, 3, 32, 35) / 100
    out = ImageTransform(32, crop_offset=offset).geometry(ramp)
    assert out.shape == (1, 3, 32, 32)
    assert out[0, 0, 0, 0].item() == pytest.approx(first_column / 100)


def test_pad_geometry_matches_hps_resize_max_size():
    """HPSv2's ResizeMaxSize written with torchvision: longest side -> 32 (bicubic, on the tensor),
    black padding split as (w//2, h//2, w - w//2, h - h//2)."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    pixels = as_tensor(smooth_images(2, height=48, width=40))
    scale = 32 / 48
    new_h, new_w = round(48 * scale), round(40 * scale)  # 32, 27
    expected = tvf.resize(pixels, [new_h, new_w], interpolation=tvf.InterpolationMode.BICUBIC)
    pad_w = 32 - new_w
    expected = tvf.pad(expected, [pad_w // 2, 0, pad_w - pad_w // 2, 0], fill=0)
    out = ImageTransform(32, fit="pad").geometry(pixels)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, expected, atol=1e-6)
    assert out[..., :2].abs().max() == 0 and out[..., -3:].abs().max() == 0  # black bars: 2 left, 3 right


def test_pil_and_tensor_pixels_differ_by_at_most_4_in_255():
    """The tolerance behind the score agreement: PIL resamples in uint8 (rounding between its two
    passes), torch in float; both are antialiased bicubic."""
    images = smooth_images(4, height=48, width=40)
    transform = ImageTransform(32)
    pil = torch.stack([transform.pil_pixels(im) for im in images])
    tensor = transform.geometry(as_tensor(images))
    difference = (pil - tensor).abs()
    assert difference.max().item() <= 4 / 255
    assert difference.mean().item() <= 1 / 255


def test_pil_path_of_pad_is_the_tensor_path():
    images = smooth_images(2, height=30, width=50)
    transform = ImageTransform(32, fit="pad")
    assert torch.allclose(transform(images), transform(as_tensor(images)), atol=1e-6)


def test_transform_from_a_processor_config():
    config = {"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224},
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}
    transform = transform_from_processor(config)
    assert (transform.size, transform.fit, transform.mean, transform.std) == (224, "crop", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="resize == crop"):
        transform_from_processor({"crop_size": 224, "size": {"shortest_edge": 256}})


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="fit"):
        ImageTransform(fit="stretch")
    with pytest.raises(ValueError, match="crop_offset"):
        ImageTransform(crop_offset="ceil")
