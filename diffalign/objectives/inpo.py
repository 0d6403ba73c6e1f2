"""InPO: "Inversion Preference Optimization with Reparametrized DDIM for Efficient Diffusion Model Alignment".

Lu et al., CVPR 2025, https://arxiv.org/abs/2503.18454 (official code: JaydenLyh/InPO ``train.py``,
a Salesforce DiffusionDPO ``train.py`` fork).

The paper treats the model as a one-step generator of x0 from each x_t and gives the implicit
reward to the pair (x0, x_t); the ``x_t`` it trains on is the DDIM *inversion* of the image, not a
forward-noised sample. The loss is then Diffusion-DPO's reference form on those latents, per pair
(column 0 = preferred w, the dataset's label; column 1 = rejected l)::

    margin = −(β/2)·[(err_θ(w) − err_θ(l)) − (err_ref(w) − err_ref(l))],   loss = mean_B −log σ(margin)

where ``err = mean_CHW ‖τ − ε̂(x̃_t, t)‖²`` on the inverted latent ``x̃_t`` with its implied noise
``τ = (x̃_t − a_t·x0)/s_t`` as target. The arithmetic is Diffusion-DPO's, so :class:`InPO` is
:class:`~diffalign.objectives.diffusion_dpo.DiffusionDPO` with its own defaults and another step:
the inversion belongs to the ``"inversion"`` preference step (``step = "inversion"``), which
hands over the errors.

Defaults, from the official launchers (``examples/sd15.sh``, ``examples/sdxl.sh``): β = 2000 for
SD1.5 (``--beta_dpo 2000``); **SDXL uses β = 5000**. Same ½β convention and mean-over-elements
errors as diffalign's Diffusion-DPO, so the official β carries over. The rest of the official
recipe, for reference: 8 GPUs × batch 1 × accumulation 128 = 1,024 pairs per step, 400 steps with
200 warm-up steps (``constant_with_warmup``), lr 1e-8 × ``--scale_lr`` = 1.024e-5, SD1.5 started
from an SFT UNet that is not distributed.

Inversion, as officially run and as diffalign runs it by default (the config's ``inversion:`` block
beside ``objective:``, the step's ``InversionConfig``; :mod:`diffalign.inversion`): DDIM inversion
with the current **policy** (no gradient), conditional only, on the fixed ``DDIMInverseScheduler``
grid of S = 10 steps over the whole schedule, one model call per step, and a noise kick
``z ← z + η·σ_DDIM·n`` after each step with η = 0.1.

Audit against the official code (JaydenLyh/InPO@a9cfc4d ``train.py``), each difference matched or stated:

- **Landing (matched, ``landing: official``).** ``inverse_scheduler.set_timesteps(10)`` (L866/875)
  and the loop over ``timesteps < t`` (L995–1011): under the diffusers the repository pins (0.20)
  each step rises from its grid point g to g + 100 (the first from −99, the model asked there),
  so the latent ends at the **first grid level at or above t** (1, 101, …, 901; 901 above the
  last start 801) while τ uses ᾱ_t (L1012–1014) and the model is told t (L1025–1029).
  ``landing: exact`` (diffalign's earlier default) inverts with ``steps`` equal steps onto t;
  ``steps: 6`` costs what the official grid costs on average (6.38 steps below a uniform t). On
  the toy the exact landing gains less than the official one (``benchmarks/results/toy.md``): the
  latent is noisier than the level the model is told, and that is what helps.
- **Empty prompts (matched, ``prompt_dropout`` 0.2).** ``--proportion_empty_prompts`` 0.2 (L353–356,
  used L683 and in ``encode_prompt_sdxl``): the pair's caption becomes "" for the inversion and the
  loss alike; here each group's draw comes from its own seed (the official one from Python's
  ``random``). A cached run embeds "" once at start.
- **Noise kick (matched).** ``0.1·√DDIMScheduler._get_variance(g + 100, g)·n`` after each step
  (L1008–1011); here n comes from the group's generator, officially from ``torch.randn_like``.
- **One t per batch (stated).** The official code takes ``timesteps[0]`` for the inversion depth
  and the target of the whole batch (L995, L1012), right only at per-device batch 1; here every
  pair has its own t.
- **Precision (stated).** Official fp16 mixed precision (the noise kick's variance in fp16); the
  toy and the tests run fp32.
- **Recipe (stated; a config's values, not code).** 8 GPUs × batch 1 × accumulation 128 = 1,024
  pairs per step, 400 steps, ``constant_with_warmup`` with 200 warm-up steps, lr 1.024e-5, SD1.5
  from an SFT UNet that is not distributed; SDXL forces Adafactor.

ε-prediction only: both InPO and SmPO assert ``prediction_type == "epsilon"``. diffalign keeps each
family's own parameterisation (as its Diffusion-DPO does), which rescales the errors by a factor
shared by w and l, i.e. multiplies β per group:

- v-prediction, ``x_t = a_t·x0 + s_t·ε`` with ``a_t² + s_t² = 1`` and ``v = a_t·ε − s_t·x0``. At a
  fixed ``x_t`` the clean estimate is ``x̂0 = (x_t − s_t·ε̂)/a_t``, so
  ``v̂ = a_t·ε̂ − s_t·x̂0 = (a_t²·ε̂ + s_t²·ε̂ − s_t·x_t)/a_t = (ε̂ − s_t·x_t)/a_t`` and likewise
  ``v = (ε − s_t·x_t)/a_t``; hence ``v̂ − v = (ε̂ − ε)/a_t`` and ``err_v = err_ε / a_t²``
  (``a_t² = ᾱ_t``): β on v-errors acts as ``β/ᾱ_t`` on ε-errors.
- rectified flow, ``x_σ = (1 − σ)·x0 + σ·ε`` and ``v = ε − x0``. At a fixed ``x_σ``,
  ``x̂0 = (x_σ − σ·ε̂)/(1 − σ)`` gives ``v̂ = ε̂ − x̂0 = (ε̂ − x_σ)/(1 − σ)``; hence
  ``v̂ − v = (ε̂ − ε)/(1 − σ)`` and ``err_v = err_ε / (1 − σ)²``: β acts as ``β/(1 − σ)²``.
  (The implied flow target of an inverted ``x̃_σ`` is ``v* = (x̃_σ − x0)/σ``.)

At θ = ref the margin is 0 and the loss is exactly ln 2 per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from .diffusion_dpo import DiffusionDPO, DiffusionDPOConfig


@dataclass
class InPOConfig(DiffusionDPOConfig):
    """``beta``: KL strength for mean-over-elements errors (official: 2000 SD1.5, 5000 SDXL);
    ``loss_type``: as Diffusion-DPO's (the paper: ``sigmoid``). How the step inverts each image is
    the config's ``inversion:`` block (defaults: :attr:`InPO.step_defaults`)."""

    beta: float = 2000.0


class InPO(DiffusionDPO):
    """InPO on pairs (``K = 2``) of inverted latents: Diffusion-DPO's loss, the inversion step's terms."""

    name = "inpo"
    Config = InPOConfig
    step = "inversion"
    step_defaults = {"steps": 10, "eta": 0.1}
    prompt_dropout = 0.2


__all__ = ["InPO", "InPOConfig"]
