"""Online RL's step (``grpo``, ``dance_grpo``): collect, then several updates over what was collected.

Per batch of ``B`` prompts (a dataset's prompts: a prompt-only dataset, or any preference
dataset, whose images are not used):

1. **collect** (:mod:`diffalign.steps.collect`): ``K`` rollouts per prompt by the policy, without
   gradient, the stochastic rule inside the SDE window (every step without one), each step's
   latent and log-probability kept; decode, score with the rewards (:mod:`diffalign.rewards.online`),
   gather every process's rewards, advantages (:meth:`diffalign.objectives.grpo.GRPO.advantages`),
   keep the images with a non-zero advantage;
2. **plan** (:mod:`diffalign.steps.buffer`): the kept images shuffled and cut into micro-batches,
   each trained at each of its trained steps, split into ``updates_per_collection`` updates;
3. **update**: per micro-batch, the policy's step log-probability recomputed with gradient at the
   recorded latents (and, with β > 0, the reference's step mean for the KL), the objective's
   clipped surrogate (:class:`~diffalign.objectives.grpo.GRPO`).

How it sits on the update contract (:meth:`~diffalign.steps.base.PreferenceStep.updates`): the
number of updates and of micro-batches in each is known before collecting (it depends on the
collection's size only), so this step yields them at once; the collection is made by the first
micro-batch's forward, which the trainer calls with the model and the batch's group generators
like any other. The trainer's ``forward(item)`` receives the batch with the plan's coordinates,
and calls this step's ``__call__``, which returns that micro-batch's terms. The collection and
how many of its updates were taken are carried in :meth:`state_dict`, so a run stopped between
two updates of a collection resumes inside it (per process: ``shared_state = False``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from diffalign.objectives.base import PreferenceTerms
from diffalign.objectives.grpo import step_kl
from diffalign.rollout_settings import OnlineRollout
from diffalign.solver import DDIM, guided, rule_log_prob
from diffalign.steps.base import MicroBatch
from diffalign.steps.buffer import keep_best_worst, plan_updates, trained_steps
from diffalign.steps.collect import (
    Collection,
    gather_rewards,
    sample,
    sample_and_score,
    window_start,
)
from diffalign.steps.rollout import PARTS, RolloutStep

DEFAULT_LEVELS = {"flow_sde": 0.7, "cps": 0.8, "dance_sde": 0.3, "ddim": 1.0}
"""Each rule's noise level when ``rollout.noise_level`` is unset (Flow-GRPO ``config/base.py`` L54;
its fast configs' CPS 0.8; DanceGRPO's η; η-DDIM 1 as SPO)."""


def make_rule(noise: str, level: float | None, family):
    """The noise rule of ``rollout.noise`` (``auto``: Flow-GRPO's SDE on a flow family, η-DDIM otherwise)."""
    from diffalign import noise_rules

    if noise == "auto":
        noise = "flow_sde" if getattr(family, "prediction_type", None) == "flow" else "ddim"
    level = DEFAULT_LEVELS[noise] if level is None else level
    return {"flow_sde": lambda: noise_rules.FlowSDE(level), "cps": lambda: noise_rules.CPS(level),
            "dance_sde": lambda: noise_rules.DanceSDE(level), "ddim": lambda: DDIM(level)}[noise]()


class OnlineStep(RolloutStep):
    """Settings: the config's ``rollout:`` block (:class:`~diffalign.step_settings.OnlineRollout`)."""

    name = "online"
    shared_state = False  # each process carries its own collection
    parts = PARTS

    @classmethod
    def settings_problem(cls, objective, settings, family) -> str | None:
        flow = getattr(family, "prediction_type", None) == "flow"
        if settings.noise in ("flow_sde", "cps", "dance_sde") and not flow:
            return (f"rollout.noise: {settings.noise} is a rectified-flow step, and this family predicts ε or v: "
                    "use rollout.noise: ddim (or auto)")
        if family.media == "video" and settings.frames is None:
            return "a video family's rollouts need a clip length: set data.frames (or rollout.frames)"
        from diffalign.rewards.online import check_reward_specs

        problems = check_reward_specs(settings.rewards, media=family.media)
        return "; ".join(f"rollout.rewards: {p}" for p in problems) or None

    def __init__(self, family, objective, reference, group_size: int, settings=None, *, rewards=None, **options):
        """``rewards``: an :class:`~diffalign.rewards.online.OnlineRewards` (or anything with its
        ``weights`` and ``__call__``) instead of loading ``settings.rewards``."""
        super().__init__(family, objective, reference, group_size, settings or OnlineRollout(), **options)
        self.rule = make_rule(self.config.noise, self.config.noise_level, family)
        if rewards is None:
            from diffalign.rewards.online import load_online_rewards

            # Offloaded rewards wait on the CPU and come to the device only to score.
            device = "cpu" if self.config.offload_rewards else family.device
            rewards = load_online_rewards(self.config.rewards, device, media=family.media)
        self.rewards = rewards
        self.weights = dict(zip(rewards.labels, rewards.weights))  # label → weight, as the advantages take them
        self.collection: Collection | None = None
        self.collections = 0
        self._resumed: Collection | None = None

    # ----------------------------------------------------------------------------- the update contract
    def updates(self, batches, forward, accumulation: int):
        """Each batch's collection as ``updates_per_collection`` updates (``accumulation`` is not
        used: a collection's micro-batches are its images × trained steps)."""
        if self._resumed is not None:  # a collection a stopped run had not finished
            collection, self._resumed = self._resumed, None
            yield from self._updates_of(collection.batch, forward, collection.number, first=collection.done)
        for batch in batches:
            if not batch["ids"]:
                yield [MicroBatch(lambda: None)]
                continue
            self.collections += 1
            yield from self._updates_of(batch, forward, self.collections)

    def _updates_of(self, batch: dict, forward, number: int, first: int = 0):
        settings = self.config
        images = len(batch["prompts"]) * settings.images_per_prompt
        chunks = -(-images // settings.micro_batch) * settings.trained_count * settings.inner_epochs
        sizes = [len(part) for part in torch.tensor_split(torch.arange(chunks), settings.updates_per_collection)]
        for update in range(first, len(sizes)):
            yield [MicroBatch(lambda u=update, i=i: forward({**batch, "online": (number, u, i)}))
                   for i in range(sizes[update])]

    def on_update(self, step: int) -> None:
        if self.collection is not None:
            self.collection.done += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.collection is None else self.collection.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            return
        self.collection = Collection.from_state(state, self.family.device)
        self.collections = self.collection.number
        self._plan(self.collection)
        if self.collection.done < len(self.collection.plan):
            self._resumed = self.collection

    # ----------------------------------------------------------------------------- one micro-batch
    def __call__(self, model, item: dict, generator) -> PreferenceTerms:
        number, update, index = item["online"]
        if self.collection is None or self.collection.number != number:
            with self.timed("rollout"):
                self.collection = self.collect(model, item, generator, number)
        with self.timed("train"):
            return self.terms(model, self.collection, self.collection.plan[update][index])

    @torch.no_grad()
    def collect(self, model, batch: dict, generators, number: int) -> Collection:
        """Sample, score and weigh one batch's rollouts (module docstring, step 1)."""
        settings, k = self.config, self.config.images_per_prompt
        b = len(batch["prompts"])
        seeds = generators if isinstance(generators, (list, tuple)) else [generators]
        order = torch.Generator().manual_seed((sum(g.initial_seed() for g in seeds) * 31 + number) % (2**63))
        start = window_start(settings, order, number)
        cond, uncond = self._conditioning(batch["prompts"], k)

        def sample_part(part, part_generators, groups):
            out = sample(self, model, part, part_generators, self.rule, start, cond.groups(groups),
                         None if uncond is None else uncond.groups(groups))
            return out, out[0][-1].flatten(0, 1)

        outputs, scores = sample_and_score(self, batch, generators, sample_part)
        latents, grid, log_prob = (torch.cat(parts, dim=dim) for parts, dim in zip(zip(*outputs), (1, 0, 1)))
        advantages, total = self._weigh(latents[-1].flatten(0, 1), scores)
        kept = advantages != 0
        if settings.keep_best_worst is not None:
            kept &= keep_best_worst(total, settings.keep_best_worst)
        span = settings.sde_window or settings.steps - 1  # the steps a random choice draws from
        steps = trained_steps(b * k, span, settings.trained_count, settings.trained, order, first=start)
        collection = Collection(
            batch=self._kept_batch(batch),
            latents=latents.flatten(1, 2), times=grid.repeat_interleave(k, dim=0), log_prob=log_prob.flatten(1, 2),
            steps=steps.to(latents.device), advantages=advantages.flatten().to(latents.device),
            kept=kept.flatten().to(latents.device), seed=int(torch.randint(2**62, (1,), generator=order)),
            number=number)
        collection.cond, collection.uncond = cond, uncond
        self._plan(collection)
        return collection

    def _weigh(self, x0: Tensor, scores: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Keep the clean samples ``x0 [N, *latent]`` for the grid, gather every process's raw
        ``scores`` (``{name: [N]}``), log them: ``(advantages, weighted reward sum)``, this process's
        ``[B, K]`` each (the sum is Flow-GRPO's weighted sum of the rewards)."""
        self.keep_images(x0)
        everyone, mine = gather_rewards(scores, self.config.images_per_prompt)
        advantages, zero_spread = self.objective.advantages(everyone, self.weights)
        total = sum(self.weights[n] * r.double() for n, r in everyone.items())  # [P, K]
        self._log_collection(everyone, total, zero_spread)
        return advantages[mine], total[mine]

    @staticmethod
    def _kept_batch(batch: dict, **extra) -> dict:
        """What a collection keeps of its batch (and its checkpoint writes): prompts, ids, indices, metas."""
        return {"prompts": list(batch["prompts"]), "ids": list(batch["ids"]), "indices": list(batch["indices"]),
                "metas": batch.get("metas"), **extra}

    def _plan(self, collection: Collection) -> None:
        settings = self.config
        collection.plan = plan_updates(collection.kept.cpu(), settings.trained_count, settings.micro_batch,
                                       settings.updates_per_collection, settings.inner_epochs,
                                       torch.Generator().manual_seed(collection.seed))

    def _conditioning(self, prompts: list[str], k: int):
        """``(cond, uncond)`` ``[B, K, ...]`` at the rollout size (``uncond`` when guiding)."""
        size = self.config.size
        b = len(prompts)
        info = {key: torch.tensor(size, dtype=torch.float32).expand(b, k, 2) for key in ("original_size", "target_size")}
        with torch.no_grad():
            cond = self.family.encode_prompts(list(prompts), group_size=k, image_info=info)
            uncond = None if self.config.guidance == 1 else self.family.encode_prompts(
                [""] * b, group_size=k, image_info=info)
        return cond, uncond

    def _log_collection(self, rewards: dict[str, Tensor], total: Tensor, zero_spread: Tensor) -> None:
        metrics = {"online/reward_mean": total.mean(), "online/reward_std": total.std(unbiased=False),
                   "online/zero_spread": zero_spread.double().mean()}
        metrics.update({f"online/reward_{name}": scores.double().mean() for name, scores in rewards.items()})
        self._metrics = {key: value.float() for key, value in metrics.items()}

    def terms(self, model, collection: Collection, micro) -> PreferenceTerms:
        """The terms of one micro-batch: ``micro.images`` at their trained step ``micro.position``."""
        if collection.cond is None:  # restored from a checkpoint: the prompts are encoded again
            collection.cond, collection.uncond = self._conditioning(collection.batch["prompts"],
                                                                    self.config.images_per_prompt)
        images = micro.images.to(collection.latents.device)
        step = collection.steps[images, micro.position]
        groups = images // self.config.images_per_prompt
        first = collection.cond.select(slice(0, 1))  # every image of a prompt has its conditioning
        cond = first.groups(groups)
        uncond = None if collection.uncond is None else collection.uncond.select(slice(0, 1)).groups(groups)
        x, x_next = collection.latents[step, images][:, None], collection.latents[step + 1, images][:, None]
        u, v = collection.times[images, step], collection.times[images, step + 1]

        def transition(with_model):
            predict = lambda x_, t_: guided(self.family, with_model, x_, t_, cond, uncond, self.config.guidance,  # noqa: E731
                                            detach_uncond=self.config.detach_uncond)
            return self.rule.transition(self.family, predict, x, u, v)

        kl = ref_mean = None
        uses_reference = self.objective.config.beta > 0
        # The reference first, on the same inputs: the policy then reuses its shared calls.
        with self.reference.paired() if uses_reference else nullcontext():
            if uses_reference:
                with torch.no_grad(), self.reference.active() as reference:
                    ref_mean = transition(reference)[1]
            _, mean, std = transition(model)
        logp = rule_log_prob(self.rule, x_next, mean, std)
        if ref_mean is not None:
            kl_std = self.rule.kl_std(std, u, v) if hasattr(self.rule, "kl_std") else std
            kl = step_kl(mean, ref_mean, kl_std.reshape(len(images), -1)[:, 0])[:, None]
        weights = torch.full((len(images),), micro.weight, device=logp.device)
        return PreferenceTerms(policy_logp=logp, old_logp=collection.log_prob[step, images][:, None],
                               advantages=collection.advantages[images][:, None], kl=kl, t=u, weights=weights)


__all__ = ["DEFAULT_LEVELS", "OnlineStep", "make_rule"]
