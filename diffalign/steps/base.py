"""A preference *step*: one batch of ``[B, K]`` groups → :class:`PreferenceTerms`, using family
operations only (``docs/architecture.md``, "The step contract"). Each objective names its step
(``Objective.step``).

The trainer asks a step for its **updates** (:meth:`PreferenceStep.updates`): lists of
:class:`MicroBatch` closures, each ``objective.loss(step(model, batch))``; the update loop
(:mod:`diffalign.training.update`) runs them. The default groups ``gradient_accumulation_steps``
batches per update; a step that collects once and updates several times overrides it. What a step
adds around that — log values, preview images, what a latent cache cannot give it, which families
it serves — it declares through the hooks below (empty by default); the trainer and the start-up
checks ask them and never test a step's type.

Shared here: which text conditions which image (:func:`~diffalign.data.schema.image_texts`, asked
with the objective's ``needs_captions``), one random generator per group, and the errors of policy
and reference on given noisy latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Iterable, Iterator

import torch
from torch import Tensor

from diffalign.data.schema import image_texts
from diffalign.objectives.base import PreferenceTerms


def group_generators(seed: int, epoch: int, indices: list[int]) -> list[torch.Generator]:
    """One generator per group, seeded by ``(seed, epoch, row)``: a group's VAE sample, noise and
    time do not depend on the batch it landed in, on the number of processes, or on a resume."""
    return [torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + i) % (2**63)) for i in indices]


@dataclass
class MicroBatch:
    """One forward of an update (:mod:`diffalign.training.update` runs them).

    Attributes:
        forward: ``() -> output`` with ``output.loss`` (a scalar with a graph) and
            ``output.metrics`` (detached scalars), or ``None`` when it has nothing to learn from
            (every group unreadable): the update is then skipped on every process.
        size: its share of the update: the loss enters the gradient as ``loss · size / Σ size``,
            so micro-batches of 3 and 5 examples whose losses are means give the gradient of
            one batch of 8 (equal sizes: ``loss / count``, as accelerate's accumulation).
    """

    forward: Callable[[], object]
    size: float = 1.0


class PreferenceStep:
    """Base class. A subclass sets ``name`` and implements :meth:`__call__`.

    Args:
        family: the loaded :class:`~diffalign.families.base.ModelFamily`.
        objective: the objective whose terms this step makes (its config may carry step options).
        reference: a :class:`~diffalign.families.reference.Reference`, or ``None`` for
            reference-free objectives.
        group_size: the dataset's ``K``.
        settings: the step's settings, the config's block built (:mod:`diffalign.step_settings`),
            ``None`` for a step without settings.
        prompt_dropout: the share of groups conditioned on the empty prompt instead of theirs
            (:func:`diffalign.step_settings.prompt_dropout`), each group's draw from its own seed.
        empty_prompt: the empty prompt's conditioning ``[1, 1, ...]`` for cached batches (whose
            text encoders are not loaded); uncached batches encode "" themselves.
    """

    name: ClassVar[str]
    shared_state: ClassVar[bool] = True
    """:meth:`state_dict` is the same on every process (it follows the synchronised weights), so a
    checkpoint holds it once; a step whose state differs per process sets ``False``."""

    def __init__(self, family, objective, reference, group_size: int, settings=None, *, prompt_dropout: float = 0.0,
                 empty_prompt=None):
        self.family, self.objective, self.reference, self.group_size = family, objective, reference, group_size
        self.config = settings
        self.prompt_dropout, self.empty_prompt = prompt_dropout, empty_prompt

    def __call__(self, model, batch: dict, generator: list[torch.Generator]) -> PreferenceTerms:
        """Terms of one batch; ``model`` is the (possibly wrapped) policy denoiser."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- what the loop asks
    def updates(self, batches: Iterable[dict], forward: Callable[[dict], object],
                accumulation: int) -> Iterator[list[MicroBatch]]:
        """The updates of ``batches`` (one epoch's, in order): by default ``accumulation``
        consecutive batches per update, each an equal share, and a shorter last update when the
        epoch ends first (as accelerate's gradient accumulation does). ``forward(batch)`` is the
        trainer's ``objective.loss(self(model, batch, generators))``.

        A step that carries something from one update to the next (a collection of samples it
        makes several updates over) keeps it in :meth:`state_dict`, so checkpoints hold it."""
        update: list[MicroBatch] = []
        for batch in batches:
            update.append(MicroBatch(lambda batch=batch: forward(batch)))
            if len(update) == accumulation:
                yield update
                update = []
        if update:
            yield update

    @classmethod
    def cache_problem(cls, objective, settings) -> str | None:
        """Why a latent cache (latents and prompt embeddings, no VAE or text encoders loaded)
        cannot serve this step for ``objective`` with ``settings``; ``None``: it can."""
        return None

    @classmethod
    def family_problem(cls, objective, family) -> str | None:
        """Why this step cannot train ``objective`` on the family class ``family``; ``None``: it can."""
        return None

    @classmethod
    def settings_problem(cls, objective, settings, family) -> str | None:
        """What is wrong with ``settings`` (the step's block, built) for ``objective`` on the family
        class ``family``, found without loading weights; ``None``: nothing."""
        return None

    def log_values(self) -> dict[str, float]:
        """Numbers the step adds to the log at each update (e.g. seconds spent rolling out)."""
        return {}

    def preview_images(self) -> Tensor | None:
        """Images ``[n, 3, H, W]`` in [0, 1] the trainer saves as a grid at the validation
        interval (a sampling step's last rollout), or ``None``."""
        return None

    def metrics(self) -> dict[str, Tensor]:
        """The step's own metrics of its last batch (detached scalars, ``<objective>/<what>``),
        logged beside the objective's; none for the forward-noising and inversion steps."""
        return {}

    def on_update(self, step: int) -> None:
        """Called by the trainer after each optimiser update ``step`` (Diffusion-DRO refreshes its
        snapshot here); nothing for the others."""

    def state_dict(self) -> dict[str, Tensor]:
        """What the step carries from one optimiser update to the next, as named tensors: every
        such piece goes into the trainer's checkpoints through this (and comes back through
        :meth:`load_state_dict`), so a resumed run equals an uninterrupted one. ``{}`` for the
        steps that carry nothing (a step is then a function of the batch and the weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Take back what :meth:`state_dict` gave, from a checkpoint."""
        if state:
            raise ValueError(f"the {self.name} step keeps no state, and the checkpoint holds some for it "
                             f"({', '.join(sorted(state)[:3])}, ...): it was written by another objective")

    def inputs(self, batch: dict, generator) -> tuple[Tensor, object]:
        """``(latents [B, K, *latent], cond)`` of a batch, each image conditioned on its text (the
        empty prompt for the groups :meth:`dropped_prompts` picks)."""
        texts = [image_texts(prompt, captions, self.group_size, self.objective.needs_captions)
                 for prompt, captions in zip(batch["prompts"], batch["captions"])]
        if self.prompt_dropout > 0:
            drop = self.dropped_prompts(generator, len(texts))
            if "latent_mean" in batch:  # cached: the stored embeddings of these texts, the empty prompt's in place
                latents, cond = self.family.inputs(batch, texts, generator=generator)
                return latents, self._with_empty_prompt(cond, drop)
            texts = [[""] * len(group) if gone else group for group, gone in zip(texts, drop)]
        return self.family.inputs(batch, texts, generator=generator)

    def _with_empty_prompt(self, cond, drop: list[bool]):
        """``cond [B, K, ...]`` with the text of the groups ``drop`` replaced by the empty prompt's
        (its SDXL time ids, which describe the image, stay)."""
        from dataclasses import replace

        if self.empty_prompt is None:
            raise ValueError("prompt_dropout on cached batches needs the empty prompt's embedding "
                             "(empty_prompt=, which the trainer encodes at start)")
        mask = torch.tensor(drop, device=cond.prompt_embeds.device)

        def swap(mine, empty):
            if mine is None:
                return None
            if empty is None or empty.shape[2:] != mine.shape[2:]:
                raise ValueError(f"the cache's text embeddings are shaped {tuple(mine.shape[2:])}, the empty prompt's "
                                 f"{None if empty is None else tuple(empty.shape[2:])}: rebuild the cache for this model")
            return torch.where(mask.view(-1, *([1] * (mine.ndim - 1))), empty.to(mine)[0, 0].expand_as(mine), mine)

        return replace(cond, prompt_embeds=swap(cond.prompt_embeds, self.empty_prompt.prompt_embeds),
                       pooled=swap(cond.pooled, self.empty_prompt.pooled))

    def dropped_prompts(self, generator, groups: int) -> list[bool]:
        """Which of ``groups`` groups train with the empty prompt: each drawn with probability
        ``prompt_dropout`` from a generator seeded by its own group generator's seed, so the draw
        leaves that generator's stream (noise, time, VAE sample) as it is and does not depend on
        the batch the group landed in."""
        if isinstance(generator, (list, tuple)):  # the trainer's: one generator per group
            seeds = [g.initial_seed() for g in generator]
        else:  # one generator (or none) for the batch: its seed, offset by the group's place
            seeds = [(generator.initial_seed() if generator is not None else 0) + i for i in range(groups)]
        return [bool(torch.rand(1, generator=torch.Generator().manual_seed((seed * 7_919 + 104_729) % (2**63)))
                     < self.prompt_dropout) for seed in seeds]

    def errors(self, model, batch: dict, latents: Tensor, cond, noise: Tensor, t: Tensor,
               ref_err: Tensor | None = None) -> PreferenceTerms:
        """Policy and (when the objective needs it) reference errors at ``add_noise(latents, noise, t)``;
        ``ref_err`` given (computed once before training) is used instead of running the reference."""
        family = self.family
        if ref_err is None and self.reference is not None:
            # The reference runs first: its no-grad activations are freed before the policy's
            # graph is built, so peak memory is the larger of the two, not their sum; and the
            # policy reuses what the two compute alike (Reference.paired).
            with self.reference.paired():
                with self.reference.active() as reference:
                    ref_err = family.denoising_error(reference, latents, cond, noise, t)
                policy_err = family.denoising_error(model, latents, cond, noise, t)
        else:
            policy_err = family.denoising_error(model, latents, cond, noise, t)
        device = policy_err.device
        return PreferenceTerms(
            policy_err=policy_err, ref_err=ref_err, t=t,
            ranks=None if batch.get("ranks") is None else batch["ranks"].to(device),
            scores=None if batch.get("scores") is None else batch["scores"].to(device),
        )
