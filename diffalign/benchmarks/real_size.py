"""Real-size architectures with random weights, for the GPU benchmarks (nothing is downloaded).

The configs are the published ``config.json`` files of
``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-xl-base-1.0`` and
``stabilityai/stable-diffusion-3-medium-diffusers`` (UNet/transformer, VAE, text encoders),
written out in each family's file (its ``real_size_components``; the text encoders shared by
several in :mod:`diffalign.families.builds`); this module asks the families for them. Speed and
memory depend on the architecture, not on the weights' values, so a randomly initialised model
measures what the released one would. The tokenizers are the tiny ones of :mod:`diffalign.testing`
(their ids fit every vocabulary; the sequence length, 77 for CLIP, is the real one).

Parameter counts of these configs are checked against the published ones in the tests
(SD1.5 UNet 0.86 B, SDXL UNet 2.57 B, SD3-Medium MMDiT 2.0 B).
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffalign.families import FAMILIES

_REAL = {name: family for name, family in FAMILIES.items() if "real" in family.real_sizes}
TINY_KIND = {name: family.tiny_kinds[0] for name, family in _REAL.items()}
"""Family name → the :mod:`diffalign.testing` pipeline of that family (its scheduler settings), for
the families with a real-size configuration."""
DEFAULT_RESOLUTION = {name: family.real_size_resolution for name, family in _REAL.items()}
MINI_RESOLUTION = 256

# Dense (no sparsity) peak TFLOP/s by GPU name fragment, from the vendors' data sheets (SXM parts).
_PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp16": 989.4, "no": 494.7}, "H200": {"bf16": 989.4, "fp16": 989.4, "no": 494.7},
                "A100": {"bf16": 312.0, "fp16": 312.0, "no": 156.0}}


def gpu_peak_tflops(mixed_precision: str) -> float | None:
    """The current GPU's dense peak for the training precision (TF32 for ``"no"``), if known."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, table in _PEAK_TFLOPS.items():
        if key in name:
            return table[mixed_precision]
    return None


def _family(name: str):
    if name not in _REAL:
        raise ValueError(f"unknown family {name!r}; choose {', '.join(_REAL)}")
    return _REAL[name]


def denoiser(family: str) -> torch.nn.Module:
    """The UNet or transformer of ``family`` (one of :data:`TINY_KIND`'s), randomly initialised
    on the current default device (use ``torch.device("meta")`` to only count parameters)."""
    return _family(family).real_size_denoiser()


def components(family: str, use_t5: bool = False, size: str = "real") -> tuple[type, dict]:
    """``(pipeline class, components)`` of a real-size pipeline with random weights.

    Args:
        use_t5: SD3 only: add the 4.7 B-parameter T5-XXL encoder (left out by default, as many
            users do; the transformer is the same either way).
        size: ``"real"``, or ``"mini"`` where the family has it (SDXL: at 1/8 of its widths).
    """
    import diffusers

    cls = _family(family)
    if size not in cls.real_sizes:
        having = [name for name, other in _REAL.items() if size in other.real_sizes]
        raise ValueError(f"--size {size} exists for {', '.join(having) or 'no family'} only, not {family!r}")
    return getattr(diffusers, cls.pipeline_class), cls.real_size_components(use_t5=use_t5, size=size)


def save_real_size_pipeline(family: str, path: str | Path, use_t5: bool = False, seed: int = 0,
                            size: str = "real") -> Path:
    """Build the real-size pipeline (on the GPU when there is one: initialising 2.6 B parameters on
    CPU takes minutes) and save it in bf16 safetensors; training loads fp32 masters from it."""
    from diffalign.benchmarks.measure import release_memory

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        cls, parts = components(family, use_t5=use_t5, size=size)
    # bf16 halves the write; the CPU mini model stays fp32 (its benchmark trains in fp32).
    pipe = cls(**parts).to(torch.bfloat16 if size == "real" else torch.float32)
    pipe.save_pretrained(str(path), safe_serialization=True)
    del pipe, parts
    release_memory()
    return Path(path)
