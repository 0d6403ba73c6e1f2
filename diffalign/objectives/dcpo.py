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

Deviation: the official trainer forces ε-prediction on SD2.1 (a v-model); here the family
computes the errors with the model's own target (ε, v or flow velocity).
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
