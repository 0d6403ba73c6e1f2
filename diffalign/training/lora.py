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


LORA_FILE = "pytorch_lora_weights.safetensors"
"""The diffusers-format file, the name ``load_lora_weights`` looks for in a folder."""
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
"""The kohya-format copy, beside the diffusers file in the LoRA folder (``load_lora_weights`` on
the folder still picks ``pytorch_lora_weights.safetensors``)."""


def save_lora(family, denoiser: torch.nn.Module, folder: Path, config: LoRAConfig | None = None) -> Path:
    """Write the adapters with the family's pipeline class's ``save_lora_weights``, and with
    ``"kohya"`` in ``config.formats`` also in the kohya/ComfyUI key format (:data:`KOHYA_FILE`;
    start-up refuses it for a family whose ``kohya_lora`` is false).

    Two experts (Wan 2.2 A14B, :class:`~diffalign.families.experts.ExpertPair`) write one file each:
    ``transformer``'s as :data:`LORA_FILE`, ``transformer_2``'s as ``pytorch_lora_weights_transformer_2.safetensors``,
    which ``pipe.load_lora_weights(folder, weight_name=…, load_into_transformer_2=True)`` loads.
    """
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from diffalign.families.experts import ExpertPair

    pipeline_cls = getattr(diffusers, family.pipeline_class)
    name = family.denoiser_name
    experts = denoiser.experts() if isinstance(denoiser, ExpertPair) else {name: denoiser}
    for component, module in experts.items():
        peft_state = get_peft_model_state_dict(module)
        # The adapter's config goes into the file's metadata: without it load_lora_weights assumes
        # alpha = rank and scales a LoRA trained with another alpha wrongly.
        pipeline_cls.save_lora_weights(
            save_directory=str(folder), safe_serialization=True,
            weight_name=LORA_FILE if component == name else f"pytorch_lora_weights_{component}.safetensors",
            **{f"{name}_lora_layers": convert_state_dict_to_diffusers(peft_state),
               f"{name}_lora_adapter_metadata": module.peft_config["default"].to_dict()})
    if config is not None and "kohya" in config.formats:
        from safetensors.torch import save_file

        save_file(family.kohya_state_dict(peft_state, config.alpha), str(Path(folder) / KOHYA_FILE))
    return folder
