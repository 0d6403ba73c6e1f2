"""The ``rollout:`` blocks of the sampling steps: SPO's (:class:`SPORollout`), Diffusion-DRO's
(:class:`DRORollout`) and online RL's (:class:`OnlineRollout`), each key with its type, bounds,
default and source. Plain dataclasses (no diffalign import): :mod:`diffalign.step_settings` says
which step takes which block and completes it when a config loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

LOG_PROB_REDUCTIONS = ("mean", "sum")


@dataclass
class SPORollout:
    """SPO's ``rollout:`` block. Defaults: the official SD1.5 launcher
    (``spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10.py``).

    Attributes:
        steps: sampler steps (DDIM, 20).
        eta: sampler η (1 = DDPM posterior variance).
        guidance: classifier-free guidance of the sampler and of both log-probabilities.
        candidates: ``k``, candidates drawn at each branching step (SDXL launcher: 2).
        threshold: a pair is kept when ``softmax([S_b, S_w])_0 − softmax(...)_1 > threshold``,
            i.e. ``S_b − S_w > 2·artanh(threshold)`` (SDXL launcher: 0.4).
        branch_from: the first step that branches (4 of 20: t ≤ 750, the paper's κ). Each pair is
            one step long: the official SDXL sampler's ``num_inner_step = 3`` (MSPO, 4-step
            branches) has no counterpart (audit in :mod:`diffalign.objectives.spo`).
        max_pairs_per_prompt: cap on the pairs of one prompt's chain that enter the loss (``None``:
            all, as the official code trains on every kept pair); memory grows with it.
        preference_model: folder of a step-aware preference model
            (:class:`~diffalign.rewards.step_aware.StepAwarePreferenceModel`, ``save_pretrained``).
        preference_checkpoint: or the authors' released ``.bin``, with ``preference_model`` the
            CLIP folder it was fine-tuned from.
        log_prob_reduction: ``mean`` over latent elements (official) or ``sum``.
    """

    steps: int = 20
    eta: float = 1.0
    guidance: float = 5.0
    candidates: int = 4
    threshold: float = 0.3
    branch_from: int = 4
    max_pairs_per_prompt: int | None = None
    preference_model: str | None = None
    preference_checkpoint: str | None = None
    log_prob_reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self):
        if not (isinstance(self.candidates, int) and self.candidates >= 2):
            raise ValueError(f"candidates must be an integer ≥ 2, got {self.candidates!r}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
        if not (isinstance(self.steps, int) and 1 <= self.branch_from < self.steps):
            raise ValueError(f"need 1 ≤ branch_from < steps, got branch_from={self.branch_from}, steps={self.steps}")
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0 (SPO needs a stochastic sampler), got {self.eta}")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ValueError(f"max_pairs_per_prompt must be ≥ 1 or null, got {self.max_pairs_per_prompt}")
        if self.log_prob_reduction not in LOG_PROB_REDUCTIONS:
            raise ValueError(f"log_prob_reduction must be one of {', '.join(LOG_PROB_REDUCTIONS)}")

    @property
    def score_gap(self) -> float:
        """The score difference the threshold asks for: ``2·artanh(threshold)``."""
        return 2 * math.atanh(self.threshold)


@dataclass
class DRORollout:
    """Diffusion-DRO's ``rollout:`` block. Defaults: the paper (App. A.2) and the official ``train.py``.

    Attributes:
        steps: rollout sampler steps (20; the official DPM-Solver++, a second-order multistep
            solver, here DDIM / Euler with η = 0: the same ODE, slightly different states).
        guidance: rollout guidance (1: none, as in the paper; rollouts are deliberately weak).
        perturb: move each rollout time up by a random fraction of its gap to the time before
            (the official "perturbed timesteps", 950…0 by 50 plus U{0..49}), one draw per prompt;
            on the family's DDIM times (SD1.5: 951…1), so within one index of the official grid.
        refresh_every: ``M``, optimiser updates between snapshot refreshes.
    """

    steps: int = 20
    guidance: float = 1.0
    perturb: bool = True
    refresh_every: int = 1

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be ≥ 0, got {self.guidance}")
        if not (isinstance(self.refresh_every, int) and self.refresh_every >= 1):
            raise ValueError(f"refresh_every must be an integer ≥ 1, got {self.refresh_every!r}")


NOISE_RULES = ("auto", "flow_sde", "cps", "dance_sde", "ddim")
TRAINED_STEPS = ("first", "random")
ODE_SOLVERS = ("ddim", "dpm2")


@dataclass
class OnlineRollout:
    """The ``rollout:`` block of the online objectives (``grpo``, ``dance_grpo``, ``diffusion_nft``):
    how a collection is sampled and scored, and how it is cut into updates. ``diffusion_nft`` samples
    deterministically with its old weights and trains each image at a random ``⌊train_fraction·steps⌋``
    of the sampler's times, so ``noise``, ``noise_level``, ``trained``, ``sde_window`` and
    ``keep_best_worst`` do not apply to it (:class:`~diffalign.steps.nft.NFTStep` refuses them). Defaults: Flow-GRPO's SD3.5-M GenEval
    config (``flow_grpo`` @ac4c86e, ``config/grpo.py`` L74–91, ``config/base.py`` L54, L86); DanceGRPO's
    values come through ``dance_grpo``'s ``step_defaults``. Cost per prompt: ``images_per_prompt ×
    steps`` guided denoiser calls without gradient, a VAE decode and a score per image; then, per
    update pass, one guided forward with gradient per (image, trained step), and one reference forward
    without gradient per (image, trained step) when ``objective.beta > 0``.

    Attributes:
        steps: sampler steps of a rollout (10; evaluation samples with more).
        guidance: classifier-free guidance of the rollouts and of the recomputed log-probabilities (4.5).
        images_per_prompt: ``K``, images sampled per prompt (the group the advantages compare; 24).
        noise: the stochastic step: ``flow_sde`` (Flow-GRPO's SDE), ``cps`` (coefficients-preserving),
            ``dance_sde`` (DanceGRPO's), ``ddim`` (η-DDIM, the one rule for ε/v UNets, as SPO), or
            ``auto``: ``flow_sde`` on a flow family, ``ddim`` otherwise (:mod:`diffalign.noise_rules`).
        noise_level: the rule's ``a`` (``flow_sde`` 0.7, ``cps`` 0.8), ``η`` (``dance_sde`` 0.3,
            ``ddim`` 1.0); ``None``: those defaults.
        trained: which steps train: ``first`` (the first ``⌊train_fraction·steps⌋``, Flow-GRPO:
            9 of 10, never the last; ``scripts/train_sd3.py`` L345, L864) or ``random`` (a random
            ``⌊train_fraction·(steps − 1)⌋`` of each image's steps but the last, drawn per image,
            DanceGRPO: 60 %, 9 of 15 on FLUX; ``fastvideo/train_grpo_flux.py`` L512–570).
        train_fraction: that share (0.99).
        sde_window: steps in the SDE window (``None``: every step stochastic). Only the window's
            steps are stochastic and trained, the rest deterministic (Flow-GRPO-Fast, MixGRPO); the
            window starts at a step drawn per collection from ``[0, sde_window_range − sde_window]``
            (Flow-GRPO-Fast), or where ``sde_window_shift_every`` puts it.
        sde_window_range: the steps the window may cover (``None``: all).
        sde_window_shift_every: ``None``: the window's start is drawn per collection (Flow-GRPO-Fast);
            ``n``: MixGRPO's progressive window, which starts at step 0 and moves ``sde_window_stride``
            steps later every ``n`` collections, so training goes from the noisy steps to the clean
            ones, and stays at the end of the range (MixGRPO ``fastvideo/utils/grpo_states.py``
            ``update_iteration``, 25 iterations a shift on 25 steps).
        sde_window_stride: steps the progressive window moves per shift (MixGRPO's
            ``prog_overlap_step``, 1).
        shared_noise: one start noise per prompt for its ``K`` images (DanceGRPO).
        ode: the solver of the deterministic steps (outside the SDE window; every step of
            ``diffusion_nft``'s sampling): ``ddim`` (DDIM with η = 0, the flow's Euler step) or
            ``dpm2`` (DPM-Solver++(2M), :mod:`diffalign.dpm_solver`: second order at the same one
            model call per step; MixGRPO's and DiffusionNFT's official sampler).
        sample_batch: prompts sampled together (``None``: the whole batch at once). With fewer than
            the batch, each part is scored in the rewards' background thread while the next part
            samples (Flow-GRPO's asynchronous rewards); the samples are the same either way.
        offload_rewards: keep the reward models on the CPU except while they score, so the updates
            have the accelerator's memory (Flow-GRPO and VeRL-Omni's reward offload); costs moving
            their weights to the device and back once per collection.
        updates_per_collection: optimiser updates over one collection's (image, trained step)
            micro-batches (Flow-GRPO: 2, so the second half is off-policy).
        inner_epochs: passes over a collection, each in a new shuffled order (1).
        micro_batch: images per forward; a micro-batch is ``micro_batch`` images at one trained step.
        keep_best_worst: train only the best and the worst ``n`` of each prompt's ``K`` images
            (DanceGRPO's video runs: 4 of 8 each); ``None``: all of them.
        rewards: the reward models, each ``{name, weight, path, frames, batch_size}``
            (:mod:`diffalign.rewards.online`); the advantage takes their weighted sum, or each on
            its own with ``objective.per_reward_advantages``.
        detach_uncond: with guidance, the recomputed log-probability's gradient flows through the
            conditional prediction only (Flow-GRPO on SD3, ``train_sd3.py`` L190); ``false``: through
            both halves (Flow-GRPO's Wan and DanceGRPO's Wan scripts).
        resolution: the height of the sampled images, and their width unless ``width`` is set
            (``None``: ``data.resolution``).
        width: the width of the sampled images when it is not ``resolution`` (Flow-GRPO's Wan: 240×416).
        frames: a video family's frames per clip (``None``: ``data.frames``).
    """

    steps: int = 10
    guidance: float = 4.5
    images_per_prompt: int = 24
    noise: Literal["auto", "flow_sde", "cps", "dance_sde", "ddim"] = "auto"
    noise_level: float | None = None
    trained: Literal["first", "random"] = "first"
    train_fraction: float = 0.99
    sde_window: int | None = None
    sde_window_range: int | None = None
    sde_window_shift_every: int | None = None
    sde_window_stride: int = 1
    shared_noise: bool = False
    ode: Literal["ddim", "dpm2"] = "ddim"
    sample_batch: int | None = None
    offload_rewards: bool = False
    updates_per_collection: int = 2
    inner_epochs: int = 1
    micro_batch: int = 8
    keep_best_worst: int | None = None
    detach_uncond: bool = True
    rewards: list[dict] = dataclasses.field(default_factory=lambda: [{"name": "pickscore", "weight": 1.0}])
    resolution: int | None = None
    width: int | None = None
    frames: int | None = None

    def __post_init__(self):
        def positive(name, value):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")

        for name in ("steps", "updates_per_collection", "inner_epochs", "micro_batch"):
            positive(name, getattr(self, name))
        if not (isinstance(self.images_per_prompt, int) and self.images_per_prompt >= 2):
            raise ValueError(f"images_per_prompt must be an integer ≥ 2 (advantages compare a prompt's images), "
                             f"got {self.images_per_prompt!r}")
        if self.noise not in NOISE_RULES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_RULES)}, got {self.noise!r}")
        if self.ode not in ODE_SOLVERS:
            raise ValueError(f"ode must be one of {', '.join(ODE_SOLVERS)}, got {self.ode!r}")
        if self.trained not in TRAINED_STEPS:
            raise ValueError(f"trained must be one of {', '.join(TRAINED_STEPS)}, got {self.trained!r}")
        if not 0 < self.train_fraction <= 1 or self.trained_count < 1:
            raise ValueError(f"train_fraction must be in (0, 1] and leave at least one trained step of {self.steps}, "
                             f"got {self.train_fraction}")
        if self.noise_level is not None and not self.noise_level > 0:
            raise ValueError(f"noise_level must be > 0, got {self.noise_level}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be ≥ 0, got {self.guidance}")
        if self.sde_window is not None:
            positive("sde_window", self.sde_window)
            reach = self.steps if self.sde_window_range is None else self.sde_window_range
            if not self.sde_window <= reach <= self.steps:
                raise ValueError(f"need sde_window ≤ sde_window_range ≤ steps, got {self.sde_window}, "
                                 f"{self.sde_window_range}, {self.steps}")
        if self.sde_window_shift_every is not None:
            if self.sde_window is None:
                raise ValueError("sde_window_shift_every moves the SDE window: set rollout.sde_window too")
            positive("sde_window_shift_every", self.sde_window_shift_every)
        positive("sde_window_stride", self.sde_window_stride)
        if self.keep_best_worst is not None and not (isinstance(self.keep_best_worst, int) and
                                                     1 <= 2 * self.keep_best_worst <= self.images_per_prompt):
            raise ValueError(f"keep_best_worst must be an integer with 2·n ≤ images_per_prompt, "
                             f"got {self.keep_best_worst!r}")
        smallest = -(-self.images_per_prompt // self.micro_batch) * self.trained_count * self.inner_epochs
        if self.updates_per_collection > smallest:  # a collection of one prompt must still fill every update
            raise ValueError(f"updates_per_collection {self.updates_per_collection} exceeds the micro-batches of a "
                             f"one-prompt collection ({smallest}: ⌈images_per_prompt/micro_batch⌉ × trained steps × "
                             "inner_epochs); lower it, or micro_batch")
        for name in ("resolution", "width", "frames", "sample_batch"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if not isinstance(self.rewards, list) or not self.rewards:
            raise ValueError("rewards must be a non-empty list of {name, weight, ...} mappings")

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of the sampled images."""
        return self.resolution, self.width or self.resolution

    @property
    def trained_count(self) -> int:
        """Trained steps per image: ``⌊train_fraction·steps⌋`` (the window's size with a window)."""
        if self.sde_window is not None:
            return self.sde_window
        if self.trained == "random":  # DanceGRPO draws from every step but the last
            return int((self.steps - 1) * self.train_fraction)
        return int(self.steps * self.train_fraction)


__all__ = ["DRORollout", "LOG_PROB_REDUCTIONS", "NOISE_RULES", "ODE_SOLVERS", "OnlineRollout", "SPORollout", "TRAINED_STEPS"]
