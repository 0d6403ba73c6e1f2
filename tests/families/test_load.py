"""Loading: family detection, round trips of every saved tiny pipeline, clear errors."""

import json
import shutil

import pytest
import torch

from diffalign.families import FAMILIES, FamilyError, detect_family, load
from diffalign.testing import tiny_components

FAMILY_OF = {"sd15": ("sd", "epsilon"), "sd21": ("sd", "v_prediction"), "sdxl": ("sdxl", "epsilon"), "sd3": ("sd3", "flow"),
             "sd35": ("sd3", "flow"), "wan22": ("wan", "flow"), "wan22_ti2v": ("wan", "flow"), "flux": ("flux", "flow"), "flux2": ("flux2", "flow"), "qwen_image": ("qwen_image", "flow"), "wan": ("wan", "flow")}


def test_detect(tiny_kind, tiny_path):
    found = detect_family(tiny_path(tiny_kind))
    assert (found.family, found.prediction_type) == FAMILY_OF[tiny_kind]


def test_round_trip_keeps_every_weight(tiny_kind, tiny_path):
    family = load(tiny_path(tiny_kind))
    assert isinstance(family, FAMILIES[FAMILY_OF[tiny_kind][0]])
    _, built = tiny_components(tiny_kind)
    for name, module in built.items():
        if isinstance(module, torch.nn.Module):
            loaded = getattr(family.pipe, name).state_dict()
            original = module.state_dict()
            assert loaded.keys() == original.keys(), name
            for key, value in original.items():
                assert torch.equal(loaded[key], value), f"{name}.{key} changed through save/load"


def test_skipping_components(tiny_path):
    family = load(tiny_path("sdxl"), load_vae=False, load_text_encoders=False)
    assert family.pipe.vae is None and family.pipe.text_encoder is None and family.pipe.text_encoder_2 is None
    with pytest.raises(FamilyError, match="needs the vae"):
        family.encode_images(torch.zeros(1, 1, 3, 32, 32))
    with pytest.raises(FamilyError, match="needs the text_encoder_2"):
        family.encode_prompts(["a cat"])


def test_dtype_and_forced_family(tiny_path):
    family = load(tiny_path("sd15"), family="sd", dtype=torch.bfloat16)
    assert family.denoiser.dtype == torch.bfloat16
    with pytest.raises(FamilyError, match="unknown family 'kandinsky'"):
        load(tiny_path("sd15"), family="kandinsky")


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(FamilyError, match="no model_index.json"):
        load(tmp_path)


def test_component_folder_gets_a_hint(tiny_path):
    with pytest.raises(FamilyError, match="pass the pipeline folder above it"):
        detect_family(tiny_path("sd15") / "unet")


def test_unsupported_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"]})
    )
    with pytest.raises(FamilyError, match="PixArtAlphaPipeline, which diffalign does not support.*sdxl"):
        detect_family(tmp_path)


def test_unsupported_prediction_type(tiny_path, tmp_path):
    folder = shutil.copytree(tiny_path("sd15"), tmp_path / "sample-pred")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "sample"
    config_file.write_text(json.dumps(config))
    with pytest.raises(FamilyError, match="prediction_type 'sample' is not supported"):
        detect_family(folder)


def test_detection_by_components(tiny_path, tmp_path):
    folder = shutil.copytree(tiny_path("sdxl"), tmp_path / "renamed")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLImg2ImgPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    assert detect_family(folder).family == "sdxl"


def test_missing_hub_id_offline():
    with pytest.raises(FamilyError, match="hub lookup failed"):
        detect_family("no-such-org/no-such-model-for-diffalign")


def test_wan22_is_the_wan_family_and_info_names_which(tiny_path):
    """Both Wan 2.2 forms load as the wan family (no longer refused); ``architecture`` says which."""
    from diffalign.families import WanFamily

    assert WanFamily.architecture(tiny_path("wan")) is None
    assert WanFamily.architecture(tiny_path("wan22")).startswith("Wan 2.2 A14B (two experts: transformer for timesteps ≥ 0.875")
    assert WanFamily.architecture(tiny_path("wan22_ti2v")).startswith("Wan 2.2 TI2V-5B")


def test_wan_shift_comes_from_the_shipped_unipc_scheduler(tiny_path):
    """The released folders ship UniPC with ``flow_shift``; training uses its shifted sigmas:
    σ' = s·σ/(1 + (s − 1)·σ) with s = 3, at σ = 1 − i/1000 (written out here)."""
    family = load(tiny_path("wan"))
    assert type(family.pipe.scheduler).__name__ == "UniPCMultistepScheduler" and family.flow_shift() == 3.0
    for i in (0, 500, 999):
        sigma = 1 - i / 1000
        assert float(family.train_sigmas[i]) == pytest.approx(3 * sigma / (1 + 2 * sigma), abs=1e-6)
