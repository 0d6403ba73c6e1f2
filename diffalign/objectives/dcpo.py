"""DCPO: "Dual Caption Preference Optimization for Diffusion Models".

Saeidi, Luo et al., TMLR 2025, https://arxiv.org/abs/2502.06023 (official code:
sahsaeedi/DCPO-T2I ``src/dcpo_trainer.py``).

Loss, per pair, with each image conditioned on its **own** caption (z_w, z_l)::

    margin = −(β/2)·[(err_θ(w|z_w) − err_θ(l|z_l)) − (err_ref(w|z_w) − err_ref(l|z_l))]
    loss   = mean_B −log σ(margin)

The per-image conditioning happens in the trainer (the errors arrive already computed with
each image's caption), so the maths here *is* Diffusion-DPO's and is inherited from
:class:`~diffalign.objectives.diffusion_dpo.DiffusionDPO`; this class only asks the data for
captions (``needs_captions``). With identical captions DCPO is Diffusion-DPO.

Defaults: β = 500, the official launcher ``src/run.sh`` (``--beta_dpo 500``; the trainer's own
default is 5000). Same ½β convention and mean-over-elements errors as Diffusion-DPO, so the
same β means the same loss.

Audit against the official code (sahsaeedi/DCPO-T2I@62335bb, ``src/dcpo_trainer.py``, ``src/run.sh``,
``src/perturb_caption.py``; the trainer is a fork of Diffusion-DPO's ``train.py``, so the items shared
with :mod:`~diffalign.objectives.diffusion_dpo`'s audit are listed here with DCPO's line numbers):

- Captions: each image's own caption goes through the text encoder (L660–680, L989–990), swapped with
  the images when ``label_0 = 0`` (L711–716); diffalign the dataset's per-image captions, best first
  (``needs_captions``). Matched.
- Caption data: Pick-Double Caption, captions by LLaVA-v1.6-34B / Emu2, the rejected one perturbed by
  DIPPER at lexical diversity 40/60/80 (README; perturb_caption.py L34, L83); ``diffalign build
  dual-captions`` uses the captioner and text model it is given and its own instructions per level.
  Stated: data, not the loss; the captions differ from the paper's.
- Prompt dropout: none on this path (``tokenize_captions``, L660–680, never reads
  ``--proportion_empty_prompts``; its 0.2 default, L355–357, reaches only the SDXL branch, L978);
  diffalign default 0. Matched.
- SDXL: the official SDXL branch ignores the dual captions (one ``caption`` column, L979) and drops
  20 % of prompts, i.e. it is Diffusion-DPO; diffalign uses the per-image captions on every family.
  Stated: only the SD1.x/2.x path is DCPO.
- Prediction type: ε is forced on the scheduler (L996–999) although run.sh trains
  stabilityai/stable-diffusion-2-1 (a v-model), at the 512 px default (L380–384); diffalign uses the
  model's own target (ε, v or flow velocity). Stated: the official SD2.1 runs regress a v-model on ε;
  ``data.resolution: 512`` matches the size.
- β: ``--beta_dpo 500`` (run.sh; the trainer's default is 5000, L347), ``−0.5·β`` (L1034–1037).
  Matched.
- Timesteps and noise: ``randint(0, 1000)``, shared by w and l (L939, L947–949). Matched.
- Reduction: mean over C·H·W (L1017), mean over pairs (L1037). Matched.
- Reference: a second UNet (L549) cast to fp16 (L855); diffalign a frozen copy or the LoRA-off policy.
  Stated: as Diffusion-DPO, rounding only.
- Ties: dropped only when the dataset path contains "pickapic" (L783–786), which run.sh's
  ``./PATH/DATASET/`` does not; diffalign's pair builders drop ties before captioning. Stated: an
  official run on a differently named folder keeps them (as jpg_0-preferred pairs).
- Flips: each image on its own, p = 0.5 (L686); diffalign ``data.random_flip`` off, one flip per group.
  Stated: ``data.random_flip: true`` flips per pair.
- Learning rate: ``1e-8 --scale_lr`` (run.sh; L602–605) = 1.024e-5 on the README's 8 GPUs;
  ``sd15/dcpo.yaml`` gives 1.024e-5 absolute. Stated: matches on 8 processes.
- Schedule: constant_with_warmup, 500 warm-up updates, × processes (run.sh; L820–825). Matched.
- Optimiser and clipping: AdamW with Diffusion-DPO's defaults, norm 1.0 (L1049–1051). Matched.
- EMA: none. Matched.
- Mixed precision: fp16 (run.sh; default L289); the shipped configs use bf16. Stated:
  ``mixed_precision: fp16`` matches.
"""

from __future__ import annotations

from dataclasses import dataclass

from .diffusion_dpo import DiffusionDPO, DiffusionDPOConfig


@dataclass
class DCPOConfig(DiffusionDPOConfig):
    """As :class:`DiffusionDPOConfig`, with the DCPO launcher's β = 500."""

    beta: float = 500.0


class DCPO(DiffusionDPO):
    """Diffusion-DPO over pairs whose images carry their own captions."""

    name = "dcpo"
    Config = DCPOConfig
    needs_captions = True


__all__ = ["DCPO", "DCPOConfig"]
