"""Diffusion-DRO's step (:mod:`diffalign.objectives.diffusion_dro`): an offline expert image and an
online rollout state of the snapshot model, at the same ``t`` and prompt.

Per group (one expert image ``x̄0`` and its prompt, ``K = 1``):

1. a deterministic rollout (DDIM / Euler, η = 0) of the snapshot from N(0, I) along the family's
   sampler grid, each time perturbed upwards by a random fraction of its gap (one draw per
   group: the official ``--buffer_perturb_timesteps``), to a drawn step ``j``; it keeps the state
   ``x_t`` and the snapshot's prediction there;
2. the expert is forward-noised to the same ``t`` with fresh noise ``ε̄``;
3. errors of policy and reference against the family's target for the expert, and against the
   snapshot's prediction for the rollout state: one forward per model on both (``[B, 2]``).

The snapshot is the policy as of its last refresh, every ``refresh_every`` optimiser updates
(and at the start of a run, so a resumed run rolls out with the weights it resumed).

Cost per group: ``j + 1 ≤ steps`` snapshot calls without gradient (mean ``(steps + 1)/2`` for
the rollout of the group drawing the latest step; the batch runs to its latest ``j``), then
policy and reference on 2 latents — about ``steps/2 + 3`` forwards against Diffusion-DPO's 4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffalign.families.reference import Snapshot
from diffalign.objectives.base import PreferenceTerms
from diffalign.rollout_settings import DRORollout
from diffalign.solver import DDIM, sampling_grid, solve
from diffalign.steps.rollout import RolloutStep


def perturbed_grid(grid: Tensor, generator) -> Tensor:
    """``[B, S + 1]`` falling times with every time but the last moved up by ``u_b`` of its gap
    to the one before (to 1 for the first), ``u_b ~ U[0, 1)`` per group."""
    gens = generator if isinstance(generator, (list, tuple)) else [generator] * grid.shape[0]
    u = torch.cat([torch.rand(1, generator=g) for g in gens]).to(grid)
    before = torch.cat([torch.ones_like(grid[:, :1]), grid[:, :-2]], dim=1)
    out = grid.clone()
    out[:, :-1] = grid[:, :-1] + u[:, None] * (before - grid[:, :-1])
    return out


class DiffusionDROStep(RolloutStep):
    """Settings: the config's ``rollout:`` block (:class:`~diffalign.step_settings.DRORollout`)."""

    name = "diffusion_dro"

    def __init__(self, family, objective, reference, group_size: int, settings=None, **options):
        super().__init__(family, objective, reference, group_size, settings or DRORollout(), **options)
        self.snapshot = Snapshot(family.denoiser, reference.lora)
        self._refreshed = False

    def on_update(self, step: int) -> None:
        """Refresh the snapshot every ``refresh_every`` updates."""
        if step % self.config.refresh_every == 0:
            self.snapshot.refresh()
            self._refreshed = True

    def state_dict(self) -> dict[str, Tensor]:
        """The snapshot's weights: between two refreshes they are not the policy's, so a run
        resumed there must roll out with them, not with the weights it resumed."""
        return self.snapshot.state_dict() if self._refreshed else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            self.snapshot.load_state_dict(state)
            self._refreshed = True

    def __call__(self, model, batch: dict, generator) -> PreferenceTerms:
        with self.timed("rollout"):
            latents, cond = self.inputs(batch, generator)
            noise, _ = self.family.sample_noise_and_time(latents, generator=generator)
            x_t, t, snapshot_pred = self.rollout(batch, cond, generator)
        with self.timed("train"):
            expert_t = self.family.add_noise(latents, noise, t)
            noisy = torch.cat([expert_t.float(), x_t], dim=1)  # [B, 2, ...]: expert, rollout state
            targets = torch.cat([self.family.target(latents, noise, t).float(), snapshot_pred], dim=1)
            pair_cond = cond.repeat_images(2)
            with self.reference.active() as reference:
                ref_err = self._errors(reference, noisy, t, pair_cond, targets)
            policy_err = self._errors(model, noisy, t, pair_cond, targets)
        return PreferenceTerms(policy_err=policy_err, ref_err=ref_err, t=t)

    def rollout(self, batch: dict, cond, generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t [B, 1, ...], t [B], prediction [B, 1, ...])`` of the snapshot at each group's drawn step."""
        if not self._refreshed:  # the weights a (resumed) run starts from
            self.snapshot.refresh()
            self._refreshed = True
        config, family = self.config, self.family
        b = len(batch["prompts"])
        latent_size = tuple(side // family.vae_scale_factor for side in self.image_size(batch))
        grid = sampling_grid(family, config.steps, b, latent_size).to(family.device)
        if config.perturb:
            grid = perturbed_grid(grid, generator)
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * b
        j = torch.cat([torch.randint(config.steps, (1,), generator=g) for g in gens]).to(family.device)
        uncond = self.unconditional(batch)
        with self.snapshot.active() as snapshot:
            traj = solve(family, snapshot, self.start_noise(batch, generator), cond, grid, DDIM(0.0),
                         guidance=config.guidance, uncond=uncond, keep_predictions=True, stop_after=int(j.max()) + 1)
        rows = torch.arange(b, device=family.device)
        self.keep_images(family.split_prediction(traj.predictions[j, rows], traj.latents[j, rows], grid[rows, j])[1][:, 0])
        self._metrics = {"diffusion_dro/rollout_t": grid[rows, j].mean()}
        return traj.latents[j, rows], grid[rows, j], traj.predictions[j, rows]

    def _errors(self, model, noisy: Tensor, t: Tensor, cond, targets: Tensor) -> Tensor:
        """``[B, 2]`` weighted mean-squared error of ``model`` at ``noisy`` against ``targets``."""
        return self.family.prediction_error(self.family.predict(model, noisy, t, cond), targets, t)


__all__ = ["DiffusionDROStep", "perturbed_grid"]
