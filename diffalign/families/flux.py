"""FLUX.1 [dev] and [schnell] (Black Forest Labs, 2024): a rectified-flow MM-DiT
(``FluxTransformer2DModel``) over 16-channel VAE latents, conditioned on T5 token states and
the CLIP text encoder's pooled output (``FluxPipeline``).

How FLUX differs from SD3, all of it here (the packed tokens and the size-dependent shift, which
Qwen-Image shares, in :mod:`~diffalign.families.packed`):
- the packed tokens' row and column are their ``img_ids``, zeros the text's ``txt_ids``;
- [dev] is guidance-**distilled**: the guidance scale is an input of the transformer
  (``guidance_embeds``), not a second forward. The family passes :attr:`embedded_guidance` (3.5,
  the pipeline's ``guidance_scale`` default and diffusers' ``train_dreambooth_lora_flux.py``
  ``--guidance_scale``) in training and sampling alike. There is no true classifier-free
  guidance: the configs sample with ``guidance: 1`` (one forward), as Flow-GRPO, DanceGRPO and
  MixGRPO do on FLUX (MixGRPO ``train_grpo_flux.py``: ``guidance=3.5``, ``--cfg 0.0``);
- the VAE shifts then scales (``shift_factor`` 0.1159, ``scaling_factor`` 0.3611), like SD3's.

Time sampling defaults to uniform (the FLUX scripts' ``--weighting_scheme none``).
"""

from __future__ import annotations

from itertools import accumulate

import torch
from torch import Tensor

from diffalign.families.base import Conditioning, FamilyError, ModelFamily, input_dtype
from diffalign.families.flow import FlowMatching
from diffalign.families.packed import PackedLatents, pack, unpack


def image_ids(h: int, w: int, device, dtype) -> Tensor:
    """``[(h/2)·(w/2), 3]`` each token's ``(0, row, column)`` over a latent of ``h × w``."""
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(PackedLatents, FlowMatching, ModelFamily):
    """FLUX.1 pipelines (``FluxPipeline``)."""

    name = "flux"
    pipeline_class = "FluxPipeline"
    denoiser_name = "transformer"
    text_components = ("text_encoder", "text_encoder_2")
    default_time_sampling = "uniform"
    repeated_blocks = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    tiny_kinds = ("flux",)
    kohya_lora = True

    def __init__(self, pipe, path: str | None = None, *, embedded_guidance: float = 3.5,
                 max_sequence_length: int | None = None, **options):
        """
        Args:
            embedded_guidance: the guidance scale a guidance-distilled transformer ([dev]) is given
                as an input, in training and sampling; ignored by [schnell] (no guidance embedding).
            max_sequence_length: T5 tokens; ``None`` = 512, the FLUX pipeline's default.
            options: see :class:`~diffalign.families.base.ModelFamily`.
        """
        super().__init__(pipe, path, **options)
        self.embedded_guidance = float(embedded_guidance)
        self.max_sequence_length = max_sequence_length or 512
        self._init_flow()

    # ----------------------------------------------------------------------------- text
    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        self._require("text_encoder", "encode_prompts")
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.pipe.text_encoder.device, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length)
        return embeds, pooled

    # ----------------------------------------------------------------------------- the denoiser
    def _predict_flat(self, model, noisy: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        dtype = input_dtype(model, self.denoiser)
        n, _, h, w = noisy.shape
        guidance = (torch.full((n,), self.embedded_guidance, device=noisy.device, dtype=torch.float32)
                    if self.denoiser.config.guidance_embeds else None)
        tokens = cond.prompt_embeds.shape[1]
        out = model(hidden_states=pack(noisy.to(dtype)), timestep=t.to(dtype), guidance=guidance,
                    pooled_projections=cond.pooled.to(dtype), encoder_hidden_states=cond.prompt_embeds.to(dtype),
                    txt_ids=torch.zeros(tokens, 3, device=noisy.device, dtype=dtype),
                    img_ids=image_ids(h, w, noisy.device, dtype), return_dict=False)[0]
        return unpack(out, h, w)

    # ----------------------------------------------------------------------------- LoRA files
    def kohya_state_dict(self, peft_state: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
        """The adapters in kohya's FLUX keys (sd-scripts' ``networks/lora_flux.py``), which ComfyUI
        loads by name onto Black Forest Labs' own module layout: ``lora_unet_<BFL path>`` with
        ``lora_down``/``lora_up``/``alpha``.

        BFL fuses what diffusers splits (a double block's ``qkv``; a single block's ``linear1`` =
        q, k, v and the MLP input), so the adapters of one fused layer become one LoRA of rank
        ``n·r``: the ``n`` adapted parts' downs stacked, their ups placed block-diagonally at their
        rows (zero rows for a part without adapter), and ``alpha·n`` as its alpha, so that
        ``alpha·n / (n·r)`` is each part's own scale. The final norm's rows are (shift, scale) in
        BFL's order and (scale, shift) in diffusers'; its up is swapped accordingly.

        Args:
            peft_state: ``get_peft_model_state_dict`` of the transformer (``….lora_A.weight``
                ``[r, in]``, ``….lora_B.weight`` ``[out, r]``).
            alpha: the adapters' ``lora_alpha``.
        """
        downs = {k.removesuffix(".lora_A.weight"): v for k, v in peft_state.items() if k.endswith(".lora_A.weight")}
        ups = {k.removesuffix(".lora_B.weight"): v for k, v in peft_state.items() if k.endswith(".lora_B.weight")}
        names, out = bfl_modules(self.denoiser.config), {}
        missing = set(downs) - {p for parts in names.values() for p in parts}
        if missing:
            raise FamilyError(f"lora.formats: kohya has no FLUX key for the adapted layers {sorted(missing)}; "
                              "drop them from lora.target_modules or write the diffusers format only")
        for bfl, parts in names.items():
            adapted = [p for p in parts if p in downs]
            if not adapted:
                continue
            starts = [0, *accumulate(self.denoiser.get_submodule(p).out_features for p in parts)]
            rank = downs[adapted[0]].shape[0]
            up = torch.zeros(starts[-1], rank * len(adapted), dtype=ups[adapted[0]].dtype)
            for j, part in enumerate(adapted):
                i = parts.index(part)
                up[starts[i]:starts[i + 1], j * rank:(j + 1) * rank] = ups[part]
            if bfl == "final_layer.adaLN_modulation.1":
                up = torch.cat(up.chunk(2)[::-1])  # diffusers' (scale, shift) rows to BFL's (shift, scale)
            key = "lora_unet_" + bfl.replace(".", "_")
            out[f"{key}.lora_down.weight"] = torch.cat([downs[p] for p in adapted]).contiguous()
            out[f"{key}.lora_up.weight"] = up
            out[f"{key}.alpha"] = torch.tensor(float(alpha) * len(adapted))
        return out

    # ----------------------------------------------------------------------------- builds
    @classmethod
    def _make_tiny_scheduler(cls, kind: str):
        from diffusers import FlowMatchEulerDiscreteScheduler

        # FLUX.1-dev's scheduler_config.json.
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                               base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                               max_image_seq_len=4096)

    @classmethod
    def tiny_components(cls, kind: str, seed: int = 0, with_t5: bool = True) -> dict:
        from diffalign.families.tiny_parts import tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_t5_encoder, tiny_t5_tokenizer, tiny_vae

        if not with_t5:
            raise FamilyError("FLUX's text tokens are T5's: its tiny pipeline always has the T5 encoder")
        return dict(
            transformer=tiny_transformer(seed=seed), vae=tiny_vae(shift_factor=0.1159, seed=seed),
            scheduler=cls.tiny_scheduler(kind),
            text_encoder=tiny_clip_text_encoder(hidden=16, seed=seed), tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=tiny_t5_encoder(seed=seed), tokenizer_2=tiny_t5_tokenizer(),
        )


def bfl_modules(config) -> dict[str, list[str]]:
    """Black Forest Labs' FLUX module path → the diffusers ``FluxTransformer2DModel`` modules it
    fuses, in its row order (the inverse of diffusers'
    ``convert_flux_transformer_checkpoint_to_diffusers``)."""
    names = {"img_in": ["x_embedder"], "txt_in": ["context_embedder"],
             "time_in.in_layer": ["time_text_embed.timestep_embedder.linear_1"],
             "time_in.out_layer": ["time_text_embed.timestep_embedder.linear_2"],
             "vector_in.in_layer": ["time_text_embed.text_embedder.linear_1"],
             "vector_in.out_layer": ["time_text_embed.text_embedder.linear_2"],
             "final_layer.linear": ["proj_out"], "final_layer.adaLN_modulation.1": ["norm_out.linear"]}
    if config.guidance_embeds:
        names["guidance_in.in_layer"] = ["time_text_embed.guidance_embedder.linear_1"]
        names["guidance_in.out_layer"] = ["time_text_embed.guidance_embedder.linear_2"]
    for i in range(config.num_layers):
        d, b = f"double_blocks.{i}", f"transformer_blocks.{i}"
        names |= {f"{d}.img_mod.lin": [f"{b}.norm1.linear"], f"{d}.txt_mod.lin": [f"{b}.norm1_context.linear"],
                  f"{d}.img_attn.qkv": [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"],
                  f"{d}.txt_attn.qkv": [f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"],
                  f"{d}.img_attn.proj": [f"{b}.attn.to_out.0"], f"{d}.txt_attn.proj": [f"{b}.attn.to_add_out"],
                  f"{d}.img_mlp.0": [f"{b}.ff.net.0.proj"], f"{d}.img_mlp.2": [f"{b}.ff.net.2"],
                  f"{d}.txt_mlp.0": [f"{b}.ff_context.net.0.proj"], f"{d}.txt_mlp.2": [f"{b}.ff_context.net.2"]}
    for i in range(config.num_single_layers):
        s, b = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        names |= {f"{s}.linear1": [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"],
                  f"{s}.linear2": [f"{b}.proj_out"], f"{s}.modulation.lin": [f"{b}.norm.linear"]}
    return names


def tiny_transformer(seed: int = 0) -> torch.nn.Module:
    """A ``FluxTransformer2DModel`` with one double and one single block over 4-channel latents
    (16 packed features), 2 heads of 8 (rotary axes 2 + 2 + 4), T5 width 32, CLIP pooled 16,
    with the guidance embedding of [dev]."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4))


__all__ = ["FluxFamily", "bfl_modules", "image_ids", "tiny_transformer"]
