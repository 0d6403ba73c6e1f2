"""DPM-Solver++(2M) as a noise rule of the solver (:func:`diffalign.solver.solve`): a deterministic
second-order multistep sampler, one model call per step, for every family.

Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv 2211.01095, Algorithm 2 (the multistep second-order update in data prediction).
With a family's path ``x_t = a_t·x0 + s_t·ε`` and ``λ_t = log(a_t/s_t)``, from time ``u`` to ``v``
(``h = λ_v − λ_u``), ``x̂0`` the model's clean-sample prediction at ``(x, u)`` (``split_prediction``)::

    first order:  x_v = (s_v/s_u)·x − a_v·(e^(−h) − 1)·x̂0                  (= DDIM with η = 0)
    second order: x_v = first order − ½·a_v·(e^(−h) − 1)·(x̂0 − x̂0_prev)/r,   r = (λ_u − λ_prev)/h

where ``x̂0_prev`` is the previous step's prediction at ``λ_prev``. The first step of a solve, and
a step onto the clean end (``v = 0``, where ``λ`` is infinite), are first order: diffusers'
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)``
and DiffusionNFT's ``dpm2`` sampler (NVlabs/DiffusionNFT @24af555,
``flow_grpo/diffusers_patch/solver.py``: ``dpm_step``, from MixGRPO) do the same. MixGRPO
(arXiv 2507.21802) samples outside its SDE window with it; DiffusionNFT samples every collection
with it (``config/nft.py`` L64).

The rule remembers the last step's ``x̂0``: :func:`~diffalign.solver.solve` calls :meth:`start`
when a walk begins, and a step whose start time is not the last step's end is taken first order.
"""

from __future__ import annotations

from torch import Tensor

from diffalign.solver import level_scales


class DPMSolver2M:
    """DPM-Solver++(2M), deterministic (module docstring)."""

    stochastic = False

    def __init__(self):
        self._last: tuple[Tensor, Tensor, Tensor] | None = None  # (end time [B], x̂0, λ at its start)

    def start(self) -> None:
        """Forget the previous step: the next one is a walk's first (first order)."""
        self._last = None

    def transition(self, family, predict, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = predict(x, u)
        x = x.float()
        a_u, s_u = level_scales(family, u, x)
        a_v, s_v = level_scales(family, v, x)
        eps, x0 = family.split_prediction(pred, x, u)
        last, self._last = self._last, None
        lam_u = (a_u / s_u).log()
        if bool((v <= 0).any()):  # onto the clean end: the first-order (DDIM) step, as lower_order_final
            return pred, a_v * x0 + s_v * eps, s_v.new_zeros(())
        lam_v = (a_v / s_v).log()
        phi = (-(lam_v - lam_u)).exp() - 1  # e^(−h) − 1
        mean = (s_v / s_u) * x - a_v * phi * x0
        if last is not None and last[0].shape == u.shape and bool((last[0] == u).all()) and last[1].shape == x0.shape:
            x0_prev, lam_prev = last[1], last[2]
            r = (lam_u - lam_prev) / (lam_v - lam_u)
            mean = mean - 0.5 * a_v * phi * (x0 - x0_prev) / r
        self._last = (v.clone(), x0, lam_u)
        return pred, mean, s_v.new_zeros(())


__all__ = ["DPMSolver2M"]
