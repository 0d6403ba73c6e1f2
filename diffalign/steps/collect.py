"""One collection of online RL (:class:`~diffalign.steps.online.OnlineStep`): a batch's prompts ×
``K`` images sampled by the policy with every step's latent and log-probability kept, decoded,
scored, and turned into advantages against the rewards gathered from every process.

As the official Flow-GRPO sampler does (``diffusers_patch/sd3_pipeline_with_logprob.py``;
``scripts/train_sd3.py`` L640–790): the log-probability of each step is recorded **at sampling**,
under the policy that sampled it, and never recomputed (the ratio's denominator); the rewards of
every process are gathered before the advantages, so a global std sees them all; each process
then keeps its own rows.

Shapes: ``B`` prompts, ``K`` images each, ``N = B·K`` images in prompt-major order (image
``n`` belongs to prompt ``n // K``), ``S`` sampler steps, ``T`` trained steps per image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffalign.solver import DDIM, initial_noise, sampling_grid, solve


@dataclass
class Collection:
    """What one collection holds (on the family's device; the tensors are what a checkpoint keeps).

    Attributes:
        batch: the prompts' ``prompts``, ``ids``, ``indices`` and ``metas`` (B each; the nft step
            adds each prompt's generator seed, ``seeds``).
        latents: ``[S + 1, N, *latent]`` the start noise and the latent after each step (the nft
            step keeps the last only, ``[1, N, *latent]``).
        times: ``[N, S + 1]`` each latent's time.
        log_prob: ``[S, N]`` each step's log-probability under the sampling policy (0 off the window;
            the nft step keeps none, ``[0, N]``).
        steps: ``[N, T]`` the sampler steps each image trains.
        advantages: ``[N]`` float64.
        kept: ``[N]`` bool, the images that train (advantage ≠ 0, and best/worst when asked).
        seed: seeds the training order (:func:`diffalign.steps.buffer.plan_updates`).
        done: updates of this collection already taken (a resumed run continues after them).
        number: which collection of the run this is (the step's count when it was made).
    """

    batch: dict
    latents: Tensor
    times: Tensor
    log_prob: Tensor
    steps: Tensor
    advantages: Tensor
    kept: Tensor
    seed: int
    done: int = 0
    number: int = 0
    cond: object = field(default=None, repr=False)
    uncond: object = field(default=None, repr=False)
    plan: list = field(default=None, repr=False)
    """The updates' micro-batches (:func:`~diffalign.steps.buffer.plan_updates`), made again from ``seed`` on resume."""

    def state_dict(self) -> dict[str, Tensor]:
        text = json.dumps(self.batch).encode()
        return {"latents": self.latents, "times": self.times, "log_prob": self.log_prob, "steps": self.steps,
                "advantages": self.advantages, "kept": self.kept,
                "counters": torch.tensor([self.seed, self.done, self.number], dtype=torch.long),
                "batch": torch.frombuffer(bytearray(text), dtype=torch.uint8).clone()}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], device) -> Collection:
        seed, done, number = state["counters"].tolist()
        batch = json.loads(bytes(state["batch"].tolist()).decode())
        tensors = {k: state[k].to(device) for k in ("latents", "times", "log_prob", "steps", "advantages", "kept")}
        return cls(batch=batch, seed=seed, done=done, number=number, **tensors)


def window_start(settings, generator: torch.Generator, number: int) -> int:
    """The first step of the SDE window of the run's ``number``-th collection (from 1): drawn in
    ``[0, sde_window_range − sde_window]`` (Flow-GRPO-Fast), or MixGRPO's progressive start
    ``min(stride · ⌊(number − 1) / shift_every⌋, sde_window_range − sde_window)``; 0 without a window.

    Deviation from MixGRPO: at the end of the range its window shrinks and then empties (training
    is complete); here it stays whole at the last ``sde_window`` steps of the range, so every
    collection trains the same number of steps (and a run longer than the sweep keeps training)."""
    if settings.sde_window is None:
        return 0
    last = (settings.steps if settings.sde_window_range is None else settings.sde_window_range) - settings.sde_window
    if settings.sde_window_shift_every is not None:
        return min(settings.sde_window_stride * ((number - 1) // settings.sde_window_shift_every), last)
    return int(torch.randint(last + 1, (1,), generator=generator))


def sample(step, model, batch: dict, generators, rule, start: int, cond, uncond) -> tuple[Tensor, Tensor, Tensor]:
    """``(latents [S + 1, B, K, *latent], times [B, S + 1], log_prob [S, B, K])`` of the policy's
    rollouts: deterministic (``rollout.ode``) before the SDE window and after it, ``rule`` inside it (every
    step when there is no window), the log-probabilities kept where it is stochastic.
    ``cond``/``uncond``: ``[B, K, ...]`` (``uncond`` when guiding)."""
    settings, family = step.config, step.family
    b, k = len(batch["prompts"]), settings.images_per_prompt
    noise = start_noise(step, b, generators)
    grid = sampling_grid(family, settings.steps, b, noise.shape[-2:]).to(family.device)
    end = settings.steps if settings.sde_window is None else start + settings.sde_window
    common = dict(guidance=settings.guidance, uncond=uncond, generator=generators)
    parts, logps, x = [noise[None]], [], noise
    for first, last, now in ((0, start, ode_rule(settings.ode)), (start, end, rule),
                             (end, settings.steps, ode_rule(settings.ode))):
        if last == first:
            continue
        stochastic = now is rule
        traj = solve(family, model, x, cond, grid[:, first:last + 1], now, log_probs=stochastic, **common)
        parts.append(traj.latents[1:])
        logps.append(traj.log_prob if stochastic else torch.zeros(last - first, b, k, device=x.device))
        x = traj.final
    return torch.cat(parts), grid, torch.cat(logps)


def ode_rule(name: str):
    """The deterministic rule ``rollout.ode`` names: ``ddim`` (η = 0) or ``dpm2`` (DPM-Solver++(2M))."""
    from diffalign.dpm_solver import DPMSolver2M

    return {"ddim": lambda: DDIM(0.0), "dpm2": DPMSolver2M}[name]()


def start_noise(step, prompts: int, generators) -> Tensor:
    """``[B, K, *latent]`` the rollouts' start noise, drawn from each prompt's generator (one draw
    for a prompt's ``K`` images with ``rollout.shared_noise``, DanceGRPO's)."""
    settings, family = step.config, step.family
    k = settings.images_per_prompt
    frames = settings.frames if family.media == "video" else None
    if settings.shared_noise:
        noise = initial_noise(family, prompts, 1, settings.size, generator=generators, frames=frames)
        return noise.expand(prompts, k, *noise.shape[2:]).clone()
    return initial_noise(family, prompts, k, settings.size, generator=generators, frames=frames)


def sample_and_score(step, batch: dict, generators, sample_part) -> tuple[list, dict[str, Tensor]]:
    """Sample the batch's prompts ``rollout.sample_batch`` at a time (all at once when unset) and
    score what each part sampled; with several parts, each part's scoring runs in the rewards'
    background thread while the next part samples (Flow-GRPO's ``executor.submit``, ``train_sd3.py``
    L663), which hides CPU-side reward work (preprocessing, a remote scorer) behind sampling.

    Each prompt draws only from its own generator, so the parts sample what one batch would. With
    ``rollout.offload_rewards`` the reward models come onto the family's device for the scoring and
    go back to the CPU after it, leaving the accelerator's memory to the updates.

    Args:
        generators: one per prompt (a single generator makes one part: its draws would depend on
            how the batch is cut).
        sample_part: ``(part_batch, part_generators, groups [B'] long) -> (output, x0 [B'·K, *latent])``.

    Returns:
        Each part's ``output`` in order, and every image's raw scores ``{name: [N] float32, CPU}``.
    """
    b = len(batch["prompts"])
    per_prompt = isinstance(generators, (list, tuple))
    size = (step.config.sample_batch or b) if per_prompt else b
    parts = [torch.arange(first, min(first + size, b)) for first in range(0, b, size)]
    background = len(parts) > 1 and hasattr(step.rewards, "submit")
    offload = step.config.offload_rewards
    outputs, pending = [], []
    if offload:
        step.rewards.to(step.family.device)
    try:
        for groups in parts:
            rows = groups.tolist()
            part = {key: [batch[key][i] for i in rows] for key in ("prompts", "metas") if batch.get(key) is not None}
            output, x0 = sample_part(part, [generators[i] for i in rows] if per_prompt else generators, groups)
            outputs.append(output)
            pixels, prompts, metas = _score_inputs(step, x0, part)
            layout = "NCFHW" if step.family.media == "video" else None  # the VAE decodes clips channels-first
            if background:
                pending.append(step.rewards.submit(pixels, prompts, metas, layout=layout))
            else:
                with step.timed("scoring"):
                    pending.append(step.rewards(pixels, prompts, metas, layout=layout))
        with step.timed("scoring"):  # only what sampling did not hide
            results = [p.result() for p in pending] if background else pending
    finally:
        if offload:
            step.rewards.to("cpu")
    return outputs, {name: torch.cat([r[name].float().cpu() for r in results]) for name in results[0]}


def _score_inputs(step, x0: Tensor, part: dict) -> tuple[Tensor, list[str], list]:
    """``(pixels [N, 3, H, W] in [0, 1], N prompts, N metadata)`` of a part's clean samples
    ``x0 [N, *latent]``, decoded in slices of ``micro_batch``, each image with its prompt's text."""
    k = step.config.images_per_prompt
    pixels = torch.cat([(step.family.decode(chunk).float() / 2 + 0.5).clamp(0, 1)
                        for chunk in x0.split(step.config.micro_batch)])
    prompts = [p for p in part["prompts"] for _ in range(k)]
    metas = [m for m in (part.get("metas") or [None] * len(part["prompts"])) for _ in range(k)]
    return pixels, prompts, metas


def gather_rewards(rewards: dict[str, Tensor], k: int) -> tuple[dict[str, Tensor], slice]:
    """Every process's ``[B, K]`` rewards stacked in process order ``[P, K]``, and the rows of this
    process (Flow-GRPO gathers before it normalises: ``accelerator.gather``, L738)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    mine = {name: scores.reshape(-1, k) for name, scores in rewards.items()}
    state = PartialState()
    if state.num_processes == 1:
        return mine, slice(0, next(iter(mine.values())).shape[0])
    everyone = gather_object([mine])
    rows = [next(iter(part.values())).shape[0] for part in everyone]
    first = sum(rows[: state.process_index])
    stacked = {name: torch.cat([part[name] for part in everyone]) for name in mine}
    return stacked, slice(first, first + rows[state.process_index])


__all__ = ["Collection", "gather_rewards", "ode_rule", "sample", "sample_and_score", "start_noise", "window_start"]
