"""The baseline of the training benchmark: a Diffusion-DPO step as the per-paper scripts write it.

It follows the structure of the official Diffusion-DPO ``train.py`` and diffusers'
``train_diffusion_dpo(_sdxl).py``, with diffalign's family maths so that only the structure
differs from the trainer (the loss is the same, Diffusion-DPO paper Eq. 14 with the ½β of the
official code):

- every step decodes the images, runs them through the VAE and the prompts through the text
  encoders (no latent cache);
- the preferred and the rejected images go through the model in **separate** forwards, for the
  policy and for the reference;
- the reference is a second full copy of the model (the scripts load ``ref_unet`` with
  ``from_pretrained``), even under LoRA;
- the loss is read with ``.item()`` at every step for the progress bar.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch.utils.data import DataLoader

from diffalign.config import LoRAConfig
from diffalign.data.dataset import PreferenceDataset
from diffalign.data.loader import GroupDataset, collate_groups, loader_workers
from diffalign.objectives.diffusion_dpo import dpo_margin, dpo_pair_loss


class NaiveDPO:
    """A naive Diffusion-DPO trainer: :meth:`step` runs one optimiser step on the next batch.

    Args:
        model: a diffusers pipeline folder.
        data: a preference dataset folder (pairs).
        lora_rank: LoRA rank, or ``None`` for full fine-tuning.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (autocast, as accelerate would).
    """

    def __init__(self, model: str, data: str, *, resolution: int, batch_size: int, lora_rank: int | None = 4,
                 lr: float = 1e-5, beta: float = 5000.0, mixed_precision: str = "no", device: str = "cpu",
                 seed: int = 0, workers: int | None = None):
        from diffusers.training_utils import cast_training_params

        from diffalign.config import torch_dtype
        from diffalign.families import load
        from diffalign.training.lora import add_lora

        self.device = torch.device(device)
        self.beta = beta
        self.amp_dtype = None if mixed_precision == "no" else torch_dtype(mixed_precision)
        weight_dtype = self.amp_dtype if (self.amp_dtype is not None and lora_rank) else torch.float32
        self.family = load(model, device=self.device, dtype=weight_dtype)
        denoiser = self.family.denoiser
        # The scripts' second full copy: ref_unet = UNet.from_pretrained(...), frozen.
        self.reference = copy.deepcopy(denoiser).requires_grad_(False).eval()
        if lora_rank:
            add_lora(denoiser, LoRAConfig(rank=lora_rank, alpha=lora_rank))
            cast_training_params(denoiser, dtype=torch.float32)
        else:
            denoiser.requires_grad_(True)
        denoiser.train()
        self.params = [p for p in denoiser.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        groups = GroupDataset(PreferenceDataset.open(data), resolution=resolution, seed=seed)
        self.loader = DataLoader(groups, batch_size=batch_size, shuffle=True, collate_fn=collate_groups,
                                 num_workers=loader_workers(workers), generator=torch.Generator().manual_seed(seed),
                                 pin_memory=self.device.type == "cuda")
        self._batches = iter(())
        self.generator = torch.Generator().manual_seed(seed)
        self.last_loss = float("nan")

    def _next_batch(self) -> dict:
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        """The Diffusion-DPO loss of one batch of pairs, computed the naive way."""
        family = self.family
        pixels = batch["pixels"].to(self.device)
        with torch.no_grad(), self._autocast():
            latents = family.encode_images(pixels, self.generator)  # the VAE, every step
            info = family.image_info(batch, tuple(pixels.shape[-2:]))
            cond = family.encode_prompts(batch["prompts"], group_size=2, image_info=info)  # every step
        noise, t = family.sample_noise_and_time(latents, self.generator)
        with self._autocast():
            errs, ref_errs = [], []
            for k in (0, 1):  # preferred, then rejected: two forwards each
                x, n = latents[:, k : k + 1], noise[:, k : k + 1]
                c = cond.select(slice(k, k + 1))
                errs.append(family.denoising_error(family.denoiser, x, c, n, t))
                with torch.no_grad():
                    ref_errs.append(family.denoising_error(self.reference, x, c, n, t))
        margin = dpo_margin(torch.cat(errs, 1), torch.cat(ref_errs, 1), self.beta)
        return dpo_pair_loss(margin).mean()

    def step(self) -> float:
        """One optimiser step; returns the loss (synchronising, as the scripts' logging does)."""
        loss = self.compute_loss(self._next_batch())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_loss = loss.item()
        return self.last_loss
