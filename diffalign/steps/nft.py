"""DiffusionNFT's step (:mod:`diffalign.objectives.diffusion_nft`): collect with the old weights,
then several updates on the forward process.

Per batch of ``B`` prompts (any dataset's prompts; its images are not used):

1. **collect**: ``K`` images per prompt sampled by the *old* weights (a
   :class:`~diffalign.families.reference.Snapshot` of the policy), deterministic (``rollout.ode``:
   DDIM with η = 0, or the official DPM-Solver++(2M)) and, by default, without guidance; decoded,
   scored, every process's rewards gathered, advantages as Flow-GRPO's (``scripts/train_nft_sd3.py`` L640–786). Only the clean samples ``x0`` are kept,
   no trajectory and no log-probability: the method needs none.
2. **plan** (:mod:`diffalign.steps.buffer`): every image trains (the official code drops none: a
   zero advantage gives ``r = ½``), in micro-batches, each at ``T = ⌊train_fraction·S⌋`` of the
   sampler's ``S`` times, a random ``T`` of them per image in a random order (L836–846).
3. **update**: per micro-batch and trained time ``t``, fresh noise ``ε``, ``x_t = add_noise(x0, ε, t)``;
   the old weights' prediction (no gradient), the reference's (no gradient, for the KL, when
   ``kl_beta > 0``) and the policy's (L866–904); each made an ``x̂0`` by the family's
   ``split_prediction``, so the objective's loss is the same on ε, v and flow families.
4. After a collection's last update, the old weights move toward the policy,
   ``old ← d·old + (1 − d)·θ`` with ``d`` from the run's update count (L1034–1039).

**Seeds.** Each image's trained times and the noise of each of its trained times come from a
generator seeded by its prompt's group generator and its place in the group (not by the process
that holds it), so two processes train the same (image, time, noise) terms as one.

Deviations from the official code, each stated where it is made: the sampler defaults to the
family's DDIM/Euler step (``rollout.ode: ddim``; the official ``dpm2``, DPM-Solver++(2M) of the same
ODE, is ``rollout.ode: dpm2``, which the SD3 configs set); the collection
is cut into ``updates_per_collection`` updates (officially ``gradient_step_per_epoch``, 1 but 2 for
OCR) of ``micro_batch`` images at one time each; images of a prompt drawn twice in one collection
form two groups (the official tracker pools them by text); no EMA of the weights for evaluation.

Memory per collection: ``N = B·K`` clean latents (a trajectory is ``S + 1`` times that). Cost per
update pass: three denoiser forwards per (image, trained time), one with gradient (two with
``kl_beta = 0``), against Flow-GRPO's two.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from diffalign.families.reference import Snapshot, has_adapters
from diffalign.objectives.base import PreferenceTerms
from diffalign.objectives.diffusion_nft import old_decay, prediction_kl, soft_update_
from diffalign.solver import sampling_grid, solve
from diffalign.steps.collect import Collection, ode_rule, sample_and_score, start_noise
from diffalign.steps.online import OnlineStep

_COLLECTION, _OLD = "collection.", "old."


def image_generator(prompt_seed: int, image: int, salt: int) -> torch.Generator:
    """A CPU generator for image ``image`` of the prompt whose group generator was seeded
    ``prompt_seed``: ``salt`` 0 draws its trained times, ``1 + p`` the noise of its ``p``-th."""
    return torch.Generator().manual_seed((prompt_seed * 1_000_003 + image * 7_919 + salt * 104_729 + 17) % (2**63))


class NFTStep(OnlineStep):
    """Settings: the config's ``rollout:`` block (:class:`~diffalign.rollout_settings.OnlineRollout`);
    ``noise``, ``sde_window`` and ``trained`` do not apply (:meth:`settings_problem`)."""

    name = "nft"

    @classmethod
    def settings_problem(cls, objective, settings, family) -> str | None:
        if settings.noise != "auto" or settings.noise_level is not None:
            return (f"{objective.name} samples with the deterministic solver (η = 0): rollout.noise and "
                    "rollout.noise_level do not apply; leave them out")
        if settings.sde_window is not None:
            return f"{objective.name} trains on the forward process, not on sampler steps: rollout.sde_window does not apply"
        if settings.trained != "first":
            return (f"{objective.name} trains each image at a random ⌊train_fraction·steps⌋ of the sampler's times "
                    "(the official choice): rollout.trained does not apply; leave it out")
        if settings.keep_best_worst is not None:
            return f"{objective.name} trains every image (r = ½ at a zero advantage): rollout.keep_best_worst does not apply"
        return super().settings_problem(objective, settings, family)

    def __init__(self, family, objective, reference, group_size: int, settings=None, *, rewards=None, **options):
        super().__init__(family, objective, reference, group_size, settings, rewards=rewards, **options)
        lora = reference.lora if reference is not None else has_adapters(family.denoiser)
        self.old = Snapshot(family.denoiser, lora)
        self._old_set = False  # the old weights start as a copy of the policy (L576–579)

    # ----------------------------------------------------------------------------- state
    def on_update(self, step: int) -> None:
        """After a collection's last update, the old weights' soft update with the decay of ``step``
        updates taken (the official ``global_step`` after the collection)."""
        super().on_update(step)
        collection = self.collection
        if collection is not None and collection.done == len(collection.plan):
            decay = old_decay(step, self.objective.config.decay_type)
            soft_update_(*self.old.pairs(), decay)
            self._metrics["diffusion_nft/old_decay"] = torch.tensor(decay)

    def state_dict(self) -> dict[str, Tensor]:
        """The collection (as the online step's) and the old weights: between two soft updates
        they are neither the policy nor its start, so a resumed run needs them."""
        state = {_COLLECTION + k: v for k, v in super().state_dict().items()}
        if self._old_set:
            state.update({_OLD + k: v for k, v in self.old.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict({k[len(_COLLECTION):]: v for k, v in state.items() if k.startswith(_COLLECTION)})
        old = {k[len(_OLD):]: v for k, v in state.items() if k.startswith(_OLD)}
        if old:
            self.old.load_state_dict(old)
            self._old_set = True

    # ----------------------------------------------------------------------------- collecting
    @torch.no_grad()
    def collect(self, model, batch: dict, generators, number: int) -> Collection:
        """Sample with the old weights, score, advantages (module docstring, step 1)."""
        if not self._old_set:  # the weights a (resumed) run starts from
            self.old.refresh()
            self._old_set = True
        settings, family, k = self.config, self.family, self.config.images_per_prompt
        b = len(batch["prompts"])
        seeds = [g.initial_seed() for g in (generators if isinstance(generators, (list, tuple)) else [generators])]
        cond, uncond = self._conditioning(batch["prompts"], k)

        def sample_part(part, part_generators, groups):
            noise = start_noise(self, len(groups), part_generators)
            grid = sampling_grid(family, settings.steps, len(groups), noise.shape[-2:]).to(family.device)
            with self.old.active() as old:
                x0 = solve(family, old, noise, cond.groups(groups), grid, ode_rule(settings.ode),
                           guidance=settings.guidance, uncond=None if uncond is None else uncond.groups(groups),
                           generator=part_generators).final.flatten(0, 1)
            return (x0, grid), x0

        outputs, scores = sample_and_score(self, batch, generators, sample_part)
        x0, grid = (torch.cat(parts) for parts in zip(*outputs))
        advantages, _ = self._weigh(x0, scores)
        n = b * k
        steps = torch.stack([torch.randperm(settings.steps, generator=image_generator(seeds[i // k], i % k, 0))
                             [:settings.trained_count] for i in range(n)])
        order = torch.Generator().manual_seed((sum(seeds) * 31 + number) % (2**63))
        collection = Collection(
            batch=self._kept_batch(batch, seeds=seeds),
            latents=x0[None], times=grid.repeat_interleave(k, dim=0), log_prob=x0.new_zeros(0, n),
            steps=steps.to(x0.device), advantages=advantages.flatten().to(x0.device),
            kept=torch.ones(n, dtype=torch.bool, device=x0.device),
            seed=int(torch.randint(2**62, (1,), generator=order)), number=number)
        collection.cond, collection.uncond = cond, uncond
        self._plan(collection)
        return collection

    # ----------------------------------------------------------------------------- one micro-batch
    def terms(self, model, collection: Collection, micro) -> PreferenceTerms:
        """The terms of one micro-batch: ``micro.images`` re-noised at their ``micro.position``-th trained time."""
        if collection.cond is None:  # restored from a checkpoint: the prompts are encoded again
            collection.cond, collection.uncond = self._conditioning(collection.batch["prompts"],
                                                                    self.config.images_per_prompt)
        family, k = self.family, self.config.images_per_prompt
        images = micro.images.to(collection.latents.device)
        x0 = collection.latents[-1, images]  # [n, *latent]
        t = collection.times[images, collection.steps[images, micro.position]]
        seeds = collection.batch["seeds"]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=image_generator(seeds[i // k], i % k, 1 + micro.position))
                             for i in images.tolist()]).to(x0)
        x_t = family.add_noise(x0[:, None], noise[:, None], t)  # [n, 1, *latent]
        # The training predictions are conditional (CFG-free), whatever guided the sampling (L866–904).
        cond = collection.cond.select(slice(0, 1)).groups(images // k)
        with self.old.active() as old:
            old_pred = family.predict(old, x_t, t, cond)
        ref_pred = None
        uses_reference = self.objective.config.kl_beta > 0
        # The reference first, on the same inputs: the policy then reuses its shared calls.
        with self.reference.paired() if uses_reference else nullcontext():
            if uses_reference:
                with self.reference.active() as reference:
                    ref_pred = family.predict(reference, x_t, t, cond)
            pred = family.predict(model, x_t, t, cond)
        x0_of = lambda p: family.split_prediction(p, x_t, t)[1][:, 0]  # noqa: E731
        kl = None if ref_pred is None else prediction_kl(pred.float(), ref_pred.float())[:, None]
        weights = torch.full((len(images),), micro.weight, device=x0.device)
        return PreferenceTerms(policy_x0=x0_of(pred).float(), old_x0=x0_of(old_pred).float(), x0=x0.float(),
                               advantages=collection.advantages[images][:, None], kl=kl, t=t, weights=weights)


__all__ = ["NFTStep", "image_generator"]
