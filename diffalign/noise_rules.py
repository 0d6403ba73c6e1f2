"""Noise rules for online RL on the rectified-flow families (SD3, Wan), beside the solver's η-DDIM
(:class:`diffalign.solver.DDIM`, which ε- and v-prediction UNets keep, as SPO does). Each is a
:class:`~diffalign.solver.NoiseRule`: one falling step from noise level ``σ = u`` to ``σ' = v``
(``[B]`` each, Δ = σ' − σ < 0) built from the velocity ``v̂`` the model predicts at ``(x, σ)``.

**Flow-GRPO's SDE** (:class:`FlowSDE`; Liu et al., 2025, arXiv 2505.05470, Eq. 8; official
``flow_grpo`` @ac4c86e, ``diffusers_patch/sd3_sde_with_logprob.py`` L47–68, ``a = 0.7`` in
``config/base.py`` L54)::

    g    = a·√(σ/(1 − σ))          (at σ = 1 the grid's next level stands in: 1 − σ')
    mean = x·(1 + g²·Δ/(2σ)) + v̂·(1 + g²·(1 − σ)/(2σ))·Δ
    std  = g·√(−Δ)

the Euler–Maruyama step of the reverse SDE with diffusion coefficient ``g``, first order in Δ.
Its log-probability is the full Gaussian's, mean over latent elements (the solver's
:func:`~diffalign.solver.gaussian_log_prob`), as officially. Beside it, ``DDIM(η)`` on a flow is
the step that keeps every marginal exactly; at equal ``a = η·√2`` the two agree to first order
only, and on a 10-step shift-3 grid DDIM's noise is 0.43–0.69× this one's, almost none on the
last trained step (``../shared/research/online_rl.md``, "DA seams" (c)).

**Coefficients-preserving sampling** (:class:`CPS`; Wang et al., 2025, arXiv 2509.05952;
Flow-GRPO's ``sde_type="cps"``)::

    std  = σ'·sin(a·π/2)
    mean = x̂0·(1 − σ') + ε̂·√(σ'² − std²),     x̂0 = x − σ·v̂,  ε̂ = x + (1 − σ)·v̂

the exact-marginal step with that std. Its official log-probability drops every constant **and**
the ``1/(2·std²)``: ``−mean((x' − mean)²)`` (:meth:`CPS.log_prob`), so its ratios are those of the
official code, not a Gaussian's.

**DanceGRPO's SDE** (:class:`DanceSDE`; Xue et al., 2025, arXiv 2505.07818; official
``XueZeyue/DanceGRPO`` @15cc71d, ``fastvideo/train_grpo_flux.py`` L131–170 ``flux_step``, the same
function in ``train_grpo_hunyuan.py`` L57–96 and ``train_grpo_wan_2_1.py`` L94–133; ``η = 0.3``
for FLUX and Wan, 0.25 for Hunyuan in ``scripts/finetune/``)::

    x̂0    = x − σ·v̂,     score = −(x − (1 − σ)·x̂0)/σ²  (= −ε̂/σ, the flow's score)
    mean  = x + Δ·v̂ − ½·η²·score·Δ
          = x·(1 + η²·Δ/(2σ)) + v̂·(1 + η²·(1 − σ)/(2σ))·Δ
    std   = η·√(−Δ)

Flow-GRPO's step with a constant diffusion coefficient ``g = η`` in place of ``a·√(σ/(1 − σ))``:
nothing is singular at σ = 1 (no stand-in level there), and the last step onto σ' = 0 is
stochastic too (std ``η·√σ``; the official code samples it but never trains on it, and rewards
the last step's ``x̂0``, not the noisy final latent: L254, L512–519). Its log-probability is the
full Gaussian's with its constants, mean over each latent's elements, in fp32 (L161–167): the
solver's :func:`~diffalign.solver.gaussian_log_prob`, so the rule defines no ``log_prob``.

**KL's std** (``kl_std``, each rule): Flow-GRPO's KL divides the step means' squared distance by
``2·std_dev_t²`` (``scripts/train_sd3.py`` @ac4c86e L895) with the ``std_dev_t`` its step
returns: for its SDE the coefficient ``g`` (``sd3_sde_with_logprob.py`` @ac4c86e L47), not the
step std ``g·√(−Δ)``; for CPS the step std (``sd3_sde_with_logprob.py`` @54809b5 L71). DanceGRPO
has no KL term; :meth:`DanceSDE.kl_std` gives the step std, what ``flux_step`` calls ``std_dev_t``.

Shapes: ``x [B, K, *latent]``, ``u, v [B]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffalign.families.noise import per_group
from diffalign.solver import REDUCTIONS


def _flow_step(family, rule: str, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """What both rules start from: the prediction at ``(x, u)`` and, in fp32, ``x`` and the levels
    ``σ, σ'`` shaped to broadcast on it; a family that is not a flow is refused."""
    if getattr(family, "prediction_type", None) != "flow":
        raise ValueError(f"{rule} is written for rectified-flow families (SD3, Wan); the {family.name} family "
                         "predicts ε or v: sample it with diffalign.solver.DDIM(eta), as SPO does")
    pred = predict(x, u)
    x = x.float()
    return pred, pred.float(), x, per_group(u.float(), x), per_group(v.float(), x)


class FlowSDE:
    """Flow-GRPO's SDE step (module docstring) with noise level ``a`` (official 0.7)."""

    def __init__(self, a: float = 0.7):
        if not a > 0:
            raise ValueError(f"the noise level a must be > 0, got {a}")
        self.a = a
        self.stochastic = True

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred, velocity, x, sigma, sigma_next = _flow_step(family, "FlowSDE", predict, x, u, v)
        delta = sigma_next - sigma
        g = self._coefficient(sigma, sigma_next)
        mean = x * (1 + g**2 * delta / (2 * sigma)) + velocity * (1 + g**2 * (1 - sigma) / (2 * sigma)) * delta
        return pred, mean, g * (-delta).clamp(min=0).sqrt()

    def _coefficient(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """``g = a·√(σ/(1 − σ))`` (official L47), shaped like ``sigma``."""
        # At σ = 1 the official code divides by 1 − sigmas[1], the grid's second level: σ' of this first step.
        return self.a * (sigma / (1 - torch.where(sigma >= 1, sigma_next, sigma))).sqrt()

    def kl_std(self, std: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """The ``std_dev_t`` Flow-GRPO's KL divides by: ``g``, i.e. the step ``std`` over ``√(σ − σ')``,
        shaped like ``std`` (module docstring). Computed from the levels, so a zero-length step
        (``std = 0``) still gets its ``g``."""
        return self._coefficient(per_group(u.float(), std), per_group(v.float(), std))


class CPS:
    """Coefficients-preserving sampling (module docstring) with noise level ``a`` (Flow-GRPO's
    fast configs: 0.8); its own :meth:`log_prob`."""

    def __init__(self, a: float = 0.8):
        if not 0 < a <= 1:
            raise ValueError(f"the noise level a must be in (0, 1], got {a}")
        self.a = a
        self.stochastic = True

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred, velocity, x, sigma, sigma_next = _flow_step(family, "CPS", predict, x, u, v)
        std = sigma_next * math.sin(self.a * math.pi / 2)
        x0, eps = x - sigma * velocity, x + (1 - sigma) * velocity
        mean = x0 * (1 - sigma_next) + eps * (sigma_next**2 - std**2).clamp(min=0).sqrt()
        return pred, mean, std

    @staticmethod
    def kl_std(std: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """The ``std_dev_t`` Flow-GRPO's KL divides by: for CPS the step ``std`` itself."""
        return std

    @staticmethod
    def log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: str = "mean") -> Tensor:
        """``[B, K]``: ``−(x − mean)²`` reduced over each latent's elements, the official CPS form."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        per_element = -((x.float() - mean) ** 2)
        dims = tuple(range(2, x.ndim))
        return per_element.mean(dims) if reduction == "mean" else per_element.sum(dims)


class DanceSDE:
    """DanceGRPO's SDE step (module docstring) with noise level ``eta`` (official 0.3 for FLUX and
    Wan, 0.25 for Hunyuan); its log-probability is the solver's Gaussian one, as officially."""

    def __init__(self, eta: float = 0.3):
        if not eta > 0:
            raise ValueError(f"the noise level eta must be > 0, got {eta}")
        self.eta = eta
        self.stochastic = True

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred, velocity, x, sigma, sigma_next = _flow_step(family, "DanceSDE", predict, x, u, v)
        delta = sigma_next - sigma
        # Written as flux_step (L141–153) computes it, so the floats follow the official order.
        x0 = x - sigma * velocity
        score = -(x - x0 * (1 - sigma)) / sigma**2
        mean = x + delta * velocity + (-0.5 * self.eta**2 * score) * delta
        return pred, mean, self.eta * (-delta).clamp(min=0).sqrt()

    @staticmethod
    def kl_std(std: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """DanceGRPO has no KL term; were one added as Flow-GRPO's, its ``std_dev_t`` (``flux_step``
        L148) is the step ``std`` itself."""
        return std


__all__ = ["CPS", "DanceSDE", "FlowSDE"]
