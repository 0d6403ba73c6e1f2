"""The written family interface (``diffalign.families.interface``), checked on every registered
family: each member exists and is of its kind, each template hook is filled, and the core
operations return the documented shapes on a tiny input. The checker itself must catch a family
that lacks a member, or it proves nothing.
"""

import inspect
import re
from pathlib import Path

import pytest
import torch

import diffalign
from diffalign.families import FAMILIES, FamilyError, FamilyInterface, ModelFamily, SDFamily
from diffalign.families.hooks import TEMPLATE_HOOKS, interface_members, missing_members, unfilled_hooks

B, K = 2, 2
SIDE = 32
FRAMES = 5  # 1 + 4: a clip the tiny Wan VAE takes (two latent frames)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_registered_family_class_meets_the_interface(name):
    cls = FAMILIES[name]
    assert missing_members(cls) == []
    assert unfilled_hooks(cls) == []
    assert cls.name == name
    assert cls.media in ("image", "video") and cls.pixel_ndim == (3 if cls.media == "image" else 4)
    assert isinstance(cls.kohya_lora, bool) and cls.tiny_kinds
    assert set(cls.real_sizes) <= {"real", "mini"}
    assert (cls.real_size_resolution is None) == (not cls.real_sizes)


def test_the_interface_lists_what_callers_use():
    members = interface_members()
    kinds = {"clip_problem": "classmethod", "pixel_multiple": "classmethod", "tiny_components": "classmethod",
             "denoiser": "property", "vae_scale_factor": "property", "media": "class attribute",
             "kohya_lora": "class attribute", "prediction_type": "attribute", "denoising_error": "method",
             "split_prediction": "method", "latent_frames": "method", "inputs": "method"}
    assert {name: members[name] for name in kinds} == kinds
    # Every interface member carries a docstring or a documented attribute (no silent entries).
    for name, kind in members.items():
        if kind in ("method", "classmethod", "property"):
            value = inspect.getattr_static(FamilyInterface, name)
            function = value.__func__ if isinstance(value, classmethod) else getattr(value, "fget", value)
            assert function.__doc__, name


def test_a_family_missing_a_member_is_reported():
    """A stand-in with SD's members but one, then one of the wrong kind: both are named."""
    members = {name: inspect.getattr_static(SDFamily, name) for name in interface_members()
               if inspect.getattr_static(SDFamily, name, None) is not None}
    missing = type("Missing", (), {k: v for k, v in members.items() if k != "clip_problem"})
    assert missing_members(missing) == ["clip_problem (classmethod)"]
    wrong = type("Wrong", (), {**members, "denoising_error": 3.0, "media": lambda: "image"})
    assert missing_members(wrong) == ["media (class attribute)", "denoising_error (method)"]
    assert not isinstance(object(), FamilyInterface)


def test_a_family_that_fills_no_hook_is_reported():
    class Half(ModelFamily):
        name = "half"
        pipeline_class = "StableDiffusionPipeline"

        def _encode_text(self, prompts):
            return torch.zeros(len(prompts), 1, 1), None

    assert unfilled_hooks(Half) == [h for h in TEMPLATE_HOOKS if h not in ("name", "pipeline_class", "_encode_text")]
    assert "loss_weight" in unfilled_hooks(Half) and "_predict_flat" in unfilled_hooks(Half)


def test_a_loaded_family_meets_the_interface(tiny_family):
    assert missing_members(tiny_family) == []
    assert isinstance(tiny_family, FamilyInterface)


def test_core_operations_return_the_documented_shapes(tiny_family, tiny_path, tiny_kind):
    family = tiny_family
    f = family.vae_scale_factor
    clip = (FRAMES,) if family.media == "video" else ()
    pixels = torch.rand(B, K, 3, *clip, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    latents = family.encode_images(pixels, gen)
    c = family.latent_channels
    frames = (family.latent_frames(FRAMES),) if clip else ()
    assert latents.shape == (B, K, c, *frames, SIDE // f, SIDE // f)                        # [B, K, *latent]
    mean, std = family.encode_posterior(pixels)
    assert mean.shape == std.shape == latents.shape
    assert family.latents_from_posterior(mean, std, gen).shape == latents.shape
    assert family.decode(latents).shape == pixels.shape                                    # [B, K, *pixels]

    cond = family.encode_prompts(["a red cat", "a dog"], group_size=K)
    assert cond.group_shape == (B, K) and cond.prompt_embeds.ndim == 4                       # [B, K, L, D]
    assert cond.pooled is None or cond.pooled.shape[:2] == (B, K)                           # [B, K, P]
    noise, t = family.sample_noise_and_time(latents, gen)
    assert noise.shape == latents.shape and t.shape == (B,)
    noisy = family.add_noise(latents, noise, t)
    assert noisy.shape == family.target(latents, noise, t).shape == latents.shape
    with torch.no_grad():
        pred = family.predict(family.denoiser, noisy, t, cond)
        err = family.denoising_error(family.denoiser, latents, cond, noise, t)
    assert pred.shape == latents.shape and err.shape == (B, K) and err.dtype == torch.float32
    eps, x0 = family.split_prediction(pred, noisy, t)
    assert eps.shape == x0.shape == latents.shape
    assert family.implied_noise(latents, noisy, t).shape == latents.shape
    a, s = family.noise_scales(t)
    assert a.shape == s.shape == (B,) and family.loss_weight(t).shape == (B,)
    times = family.sampling_times(3, (SIDE // f, SIDE // f))
    assert times.shape == (4,) and times[-1] == 0 and (times[:-1] >= times[1:]).all()
    assert len(family.final_scales()) == 2
    assert SIDE % type(family).pixel_multiple(tiny_path(tiny_kind)) == 0


def test_the_frame_rule_is_asked_of_the_family_class():
    for cls in FAMILIES.values():
        if cls.media == "image":
            assert "makes images" in cls.clip_problem(FRAMES)
        else:
            assert cls.clip_problem(FRAMES) is None and "6 frames cannot be encoded" in cls.clip_problem(6)


def test_an_image_family_refuses_latent_frames(tiny_path):
    from diffalign.families import load

    with pytest.raises(FamilyError, match="makes images"):
        load(tiny_path("sd15"), load_text_encoders=False).latent_frames(FRAMES)


def test_family_facts_outside_the_package_come_from_the_registry():
    """The tables that used to list family names are now read from the family classes."""
    from diffalign.benchmarks import real_size
    from diffalign.config import ModelConfig
    from diffalign.testing import TINY_FAMILIES
    from diffalign.typed_config import ConfigError, from_dict

    assert TINY_FAMILIES == ("sd15", "sd21", "sdxl", "sd3", "sd35", "flux", "flux2", "qwen_image", "wan", "wan22",
                             "wan22_ti2v")
    assert real_size.TINY_KIND == {"sd": "sd15", "sdxl": "sdxl", "sd3": "sd3"}
    assert real_size.DEFAULT_RESOLUTION == {"sd": 512, "sdxl": 1024, "sd3": 1024}
    assert [n for n, cls in FAMILIES.items() if cls.kohya_lora] == ["sd", "sdxl", "flux"]  # lora.formats: kohya
    assert from_dict(ModelConfig, {"path": "org/model", "family": "sdxl"}).family == "sdxl"
    assert from_dict(ModelConfig, {"path": "org/model", "family": "flux"}).family == "flux"
    with pytest.raises(ConfigError, match="family: expected one of 'sd', 'sdxl', 'sd3', 'flux', 'flux2', 'qwen_image', 'wan', got 'qwen'"):
        from_dict(ModelConfig, {"path": "org/model", "family": "qwen"}, source="model")


# Files that still name families: the released step-aware reward files (sd15/sdxl), SPO's supported
# families, and the benchmarks' default --family (a choice of the benchmark, not a family fact).
_NAMING_ALLOWED = {"rewards/step_aware_authors.py"}
"""The step-aware model's released files were once keyed "sd15"/"sdxl"; their deprecation map reads
those old values for one release."""


def test_no_family_name_is_written_outside_the_families_package():
    root = Path(diffalign.__file__).parent
    quoted = re.compile(r"""["'](sd|sd15|sd21|sdxl|sd3|wan)["']""")
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("families/") or rel in _NAMING_ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if quoted.search(line) and ">>>" not in line:  # doctest examples may name a tiny pipeline
                found.append(f"{rel}:{number}: {line.strip()}")
    assert found == []
