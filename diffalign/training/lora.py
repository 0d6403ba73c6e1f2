"""LoRA adapters through peft, saved in the format ``pipeline.load_lora_weights`` reads."""

from __future__ import annotations

from pathlib import Path

import torch

from diffalign.config import LoRAConfig


def add_lora(denoiser: torch.nn.Module, config: LoRAConfig) -> None:
    """Freeze ``denoiser`` and add trainable LoRA adapters (B initialised to zero, so training
    starts exactly at the base model, which is also the reference)."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        init_lora_weights="gaussian", target_modules=list(config.target_modules),
    ))


def save_lora(family, denoiser: torch.nn.Module, folder: Path) -> Path:
    """Write the adapters with the family's pipeline class's ``save_lora_weights``."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    pipeline_cls = getattr(diffusers, family.pipeline_class)
    pipeline_cls.save_lora_weights(save_directory=str(folder), safe_serialization=True,
                                   **{f"{family.denoiser_name}_lora_layers": layers})
    return folder
