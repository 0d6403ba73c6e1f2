"""Loading: family detection, round trips of every saved tiny pipeline, clear errors."""

import json
import shutil

import pytest
import torch

from diffalign.families import FAMILIES, FamilyError, detect_family, load
from diffalign.testing import tiny_components

FAMILY_OF = {"sd15": ("sd", "epsilon"), "sd21": ("sd", "v_prediction"), "sdxl": ("sdxl", "epsilon"), "sd3": ("sd3", "flow")}


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
    with pytest.raises(FamilyError, match="unknown family 'flux'"):
        load(tiny_path("sd15"), family="flux")


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(FamilyError, match="no model_index.json"):
        load(tmp_path)


def test_component_folder_gets_a_hint(tiny_path):
    with pytest.raises(FamilyError, match="pass the pipeline folder above it"):
        detect_family(tiny_path("sd15") / "unet")


def test_unsupported_pipeline(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]})
    )
    with pytest.raises(FamilyError, match="FluxPipeline, which diffalign does not support.*sdxl"):
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
