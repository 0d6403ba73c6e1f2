"""The toy alignment benchmark: does training with an objective make the model *better*?

1. Pretrain (or load from the cache) the tiny SD1.5-style base model of the toy world.
2. Sample ``samples_per_prompt`` images per prompt from it, score them with the toy reward and
   write preference data (:mod:`diffalign.toy.samples`): ranked groups, best-vs-worst pairs (256
   by default) with a caption per image for DCPO, experts, the step-aware model's pairs.
3. Align the base model with each objective (LoRA, ``epochs`` passes over its data with the
   official schedule shape: a linear warm-up, then constant), tracking the reward and prompt
   following of samples on the **curve seeds** during training.
4. **The protocol** (``lr_sweep`` and ``train_seeds``, :data:`PROTOCOL`): train each objective at
   every learning rate of the sweep, choose the one whose curve-seed reward is highest at the end
   (among those that keep the curve seeds' prompt following within 0.05 of the base), then train
   at that rate with the other training seeds. Only the chosen rate's runs are evaluated on the
   **held-out evaluation seeds** (never seen while choosing): per seed the mean reward, the gain
   paired over the same prompts and seeds with a 95 % bootstrap interval, the win-rate against
   the base and the prompt-following fraction; and the mean over seeds.

Without a sweep each objective trains at its toy learning rate (:data:`TOY_LR`, chosen by the
protocol) with one seed: ``diffalign demo``.

Outputs in the run folder: ``results.json``, ``report.md``, ``reward_curve.png`` and
``grid_<objective>.png`` (base above, aligned below, same seeds).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign.config import to_dict
from diffalign.data.dataset import PreferenceDataset
from diffalign.toy.pretrain import PretrainConfig, base_model
from diffalign.toy.reward import ToyRewardScorer, follows_prompt, toy_reward
from diffalign.toy.samples import build_preference_data, generate, grid, sampling_pipe
from diffalign.toy.summary import equal_time, objective_summary, runs_summary, sample_summary, step_costs, watch

TOY_REWARD_SPREAD = 0.374
"""SmPO's ``score_scale`` on the toy: max − min of the toy reward over the earlier protocol's 64
pairs at seed 0. Each run records its own spread in ``results.json`` (``data.reward_spread``;
0.426 over the protocol's 256 pairs); the constant stays, so SmPO's label scale is the one its
rate was chosen with."""

# Per-objective training settings for the toy (LoRA rank 8): the strengths the papers use are
# calibrated for 2000+ steps at batch 2048; a few hundred small steps need a stronger signal.
DEFAULT_OBJECTIVES = {
    "diffusion_dpo": {"objective": {"name": "diffusion_dpo", "beta": 1000.0}},
    # Reference-free, MaPO's margin on the toy measures how hard each image is to denoise (the
    # preferred, larger shapes are easier), and a strong λ·T only unlearns the rejected images
    # (swept on the earlier protocol: λ ∈ {0.01, 0.1, 1} × T ∈ {1e3, 1e4, 1e5}; only λ = 0.01 gained).
    "mapo": {"objective": {"name": "mapo", "beta_mapo": 0.01, "snr_value": 0.5}},
    "dcpo": {"objective": {"name": "dcpo", "beta": 1000.0}},
    "rank_dpo": {"objective": {"name": "rank_dpo", "beta": 1000.0}},
    "sft": {"objective": {"name": "sft"}},
    # Diffusion-DPO's toy β on inverted latents; the inversion and prompt dropout as official.
    "inpo": {"objective": {"name": "inpo", "beta": 1000.0}},
    # score_scale: the spread (max − min) of the toy reward over the toy's pairs, as the official
    # code normalises PickScore by its spread over Pick-a-Pic.
    "smpo": {"objective": {"name": "smpo", "beta": 1000.0, "score_scale": TOY_REWARD_SPREAD}},
    # The sampler the toy samples with (guidance 4), a 10-step chain branching after 2 steps, 3
    # candidates, at most 2 pairs per prompt; the step-aware model is trained on the toy's pairs
    # first (``rollout.preference_model`` is filled in by the run). β, clip and threshold as the paper.
    "spo": {"objective": {"name": "spo"},
            "rollout": {"steps": 10, "branch_from": 2, "candidates": 3, "guidance": 4.0, "max_pairs_per_prompt": 2}},
    # Experts: the best image of each toy group (K = 1); a 10-step rollout; the paper's margin.
    "diffusion_dro": {"objective": {"name": "diffusion_dro"}, "rollout": {"steps": 10}},
    # Online RL with the toy reward as its reward model, on the toy pairs' prompts (their images
    # unused): the sampler the toy samples with (guidance 4, 10 steps of η-DDIM, the UNet's SDE),
    # 8 images per prompt, Flow-GRPO's 9 trained steps and 2 updates per collection; 150 updates.
    # The gradient goes through both halves of guidance (as its Wan configs; SD3's detaches the
    # unconditional half): the protocol's runs of 2026-12-07 were made so.
    "grpo": {"objective": {"name": "grpo", "beta": 0.01, "clip_range": 1e-4},
             "rollout": {"steps": 10, "guidance": 4.0, "images_per_prompt": 8, "micro_batch": 16, "detach_uncond": False,
                         "rewards": [{"name": "diffalign.toy.reward:ToyReward"}]}, "max_steps": 150},
    # DanceGRPO's choices that apply to a UNet: shared start noise, a random 60 % of the steps,
    # per-group advantages, no KL; its SDE is a flow step, so η-DDIM as for grpo.
    "dance_grpo": {"objective": {"name": "dance_grpo"},
                   "rollout": {"steps": 10, "guidance": 4.0, "images_per_prompt": 8, "micro_batch": 16, "noise": "ddim",
                               "rewards": [{"name": "diffalign.toy.reward:ToyReward"}]}, "max_steps": 150},
    # DiffusionNFT as officially: its old weights sample 10 deterministic steps without guidance (the
    # evaluation still samples at guidance 4), each image trained at 9 of the 10 times; the collection
    # and updates as grpo's (8 images per prompt, 2 updates per collection) for an equal update count.
    "diffusion_nft": {"objective": {"name": "diffusion_nft"},
                      "rollout": {"steps": 10, "guidance": 1.0, "images_per_prompt": 8, "micro_batch": 16,
                                  "rewards": [{"name": "diffalign.toy.reward:ToyReward"}]}, "max_steps": 150},
}
ALL_OBJECTIVES = tuple(DEFAULT_OBJECTIVES)

TOY_LR = {"diffusion_dpo": 1e-3, "mapo": 1e-3, "dcpo": 3e-4, "rank_dpo": 1e-3, "sft": 1e-3, "inpo": 1e-3,
          "smpo": 3e-4, "spo": 1e-4, "diffusion_dro": 1e-3, "grpo": 1e-3, "dance_grpo": 1e-3,
          "diffusion_nft": 1e-3}
"""Each objective's toy learning rate: the protocol's choice of {1e-4, 3e-4, 1e-3} on the curve
seeds (``benchmarks/results/toy.md``, 2026-12-07). SPO with the toy reward as its scorer chose 3e-4."""

ORACLE = "spo_oracle"
"""SPO with the toy reward itself as its step-aware scorer (:class:`~diffalign.toy.reward.ToyRewardScorer`):
a run of SPO that tells its method from its learned scorer. Asked for by name in ``objectives``."""

VARIANTS = {
    ORACLE: ("spo", {}),
    # Flow-GRPO-Fast: the SDE window, 2 steps drawn per collection among the first 5 of 10 (its fast
    # configs: 2 or 3 steps in the first 5 or 6); every other step deterministic and untrained.
    "grpo_fast": ("grpo", {"rollout": {"sde_window": 2, "sde_window_range": 5}}),
    # MixGRPO: the window slides from the noisy steps to the clean ones (its 4 of 25 steps, moved one
    # step every 25 iterations, never over the last 2 steps; here 2 of 10 in the first 8, moved every
    # 10 collections so the 75 collections of 150 updates sweep the range once), DPM-Solver++(2M)
    # outside it (MixGRPO-Flash's higher-order ODE).
    "mixgrpo": ("grpo", {"rollout": {"sde_window": 2, "sde_window_range": 8, "sde_window_shift_every": 10,
                                     "ode": "dpm2"}}),
}
"""Named runs of an objective with other settings (``run: (objective, settings merged over its
:data:`DEFAULT_OBJECTIVES` entry)``), asked for by name in ``objectives``; each trains at its
objective's toy learning rate. The fast online variants keep grpo's collection and update count."""

FAST_VARIANTS = ("grpo_fast", "mixgrpo")


def objective_of(run: str) -> str:
    """The objective a run trains (a variant's, or the run's own name)."""
    return VARIANTS[run][0] if run in VARIANTS else run


def run_settings(config: BenchmarkConfig, run: str) -> dict:
    """The run's training settings: its objective's, with a variant's merged over them block by block."""
    settings = copy.deepcopy(config.objective_settings[objective_of(run)])
    for block, values in VARIANTS.get(run, (None, {}))[1].items():
        settings[block] = {**settings.get(block, {}), **values}
    return settings


def check_runs(runs) -> None:
    """Refuse a name that is neither an objective nor a variant, naming the choices."""
    from diffalign.typed_config import ConfigError

    unknown = [r for r in runs if r not in DEFAULT_OBJECTIVES and r not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown objective {', '.join(map(repr, unknown))}: choose from "
                         f"{', '.join((*DEFAULT_OBJECTIVES, *VARIANTS))}")

PROTOCOL = {"lr_sweep": (1e-4, 3e-4, 1e-3), "train_seeds": 3}
"""The settings that turn a run into the ranking protocol (``examples/toy_alignment.py``)."""

DEMO = {"samples_per_prompt": 64}
"""``diffalign demo``: half the protocol's data (128 pairs, so 64 updates in its 2 epochs), one
seed at the toy learning rate, to keep the first run within about 2 minutes on 2 cores."""


@dataclass
class BenchmarkConfig:
    objectives: tuple[str, ...] = ALL_OBJECTIVES
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    samples_per_prompt: int = 128
    """Images per prompt; groups of ``group_size`` make ``8 · samples_per_prompt / group_size`` pairs (256)."""
    group_size: int = 4
    inference_steps: int = 20
    guidance_scale: float = 4.0
    epochs: float = 2.0
    train_steps: int | None = None
    """Updates per run; ``None``: ``epochs`` passes over the objective's groups."""
    batch_size: int = 4
    warmup_fraction: float = 0.25
    """Share of the updates the learning rate warms up over (``constant_with_warmup``, the official
    schedule of Diffusion-DPO, InPO and SmPO)."""
    lr: float | None = None
    """One learning rate for every objective; ``None``: each objective's :data:`TOY_LR`."""
    lr_sweep: tuple[float, ...] = ()
    """Learning rates to choose from on the curve seeds (empty: no sweep)."""
    train_seeds: int = 1
    """Training seeds ``seed, seed + 1, …`` at the chosen learning rate (the data stays seed's)."""
    lora_rank: int = 8
    eval_seeds_per_prompt: int = 16
    curve_every: int = 32
    curve_seeds_per_prompt: int = 4
    step_aware_steps: int = 2000
    """At most this many training steps of the toy's step-aware model (SPO); it stops early when
    its held-out pair loss stops improving (``step_aware_patience`` evaluations)."""
    step_aware_patience: int = 4
    seed: int = 0
    objective_settings: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_OBJECTIVES))
    """Per objective, the training config's ``objective:`` block and its step's block (``rollout:``)."""
    equal_time: bool = True
    """With Diffusion-DPO in the run, train every other objective again per seed for as many updates
    as fit in Diffusion-DPO's training time (at its own measured seconds per update) and evaluate
    those runs too: the comparison at an equal wall-clock budget."""

    def steps_for(self, groups: int) -> int:
        return self.train_steps or max(1, math.ceil(self.epochs * groups / self.batch_size))


def train_step_aware_model(base: Path, data: Path, out: Path, config: BenchmarkConfig, progress: bool = True) -> dict:
    """SPO's step-aware preference model for the toy: a tiny CLIP (:func:`~diffalign.rewards.tiny.tiny_step_aware`,
    random weights) trained on the toy's pairs on the base model's ``x̂0``, as the paper trains
    its on Pick-a-Pic, until its held-out pair loss stops improving (a quarter of the pairs never
    train). Returns the best evaluation's held-out accuracy per time and the model folder."""
    from diffalign.rewards.tiny import tiny_step_aware
    from diffalign.training.step_aware import SPMTrainConfig, train_step_aware

    init = tiny_step_aware(seed=config.seed).save_pretrained(out / "init")
    spm = SPMTrainConfig(data=str(data), base_model=str(base), out=str(out / "run"), init=str(init),
                         steps=config.step_aware_steps, batch_size=16, lr=1e-3, weight_decay=0.0, warmup_steps=0,
                         lr_scheduler="constant", guidance=config.guidance_scale, resolution=32,
                         heldout_fraction=0.25, checkpoint_every=0, seed=config.seed,
                         **_early_stopping(config))
    result = train_step_aware(spm, progress=progress)
    return {"model": str(out / "run" / "final"), "heldout_accuracy": result}


def _early_stopping(config: BenchmarkConfig) -> dict:
    return {"eval_every": 100, "patience": config.step_aware_patience} if config.step_aware_steps >= 200 else {}


# --------------------------------------------------------------------------------- one run
@dataclass
class Curve:
    """What the curve seeds show during a run: ``points`` ``[(step, reward, following), ...]``;
    ``proxy`` ``[(step, mean of the step's own score), ...]`` for a step that reports one (SPO's
    step-aware score), the value the divergence watch compares with the true reward."""

    sample: object
    points: list = field(default_factory=list)
    proxy: list = field(default_factory=list)
    parts: dict = field(default_factory=dict)
    """A sampling step's seconds per update spent rolling out and training (``rollout_…``, ``train_…``)."""


def align(objective: str, base: Path, data: Path, out: Path, config: BenchmarkConfig, curve: Curve, lr: float,
          seed: int, progress: bool = True) -> tuple[object, float]:
    """Train one objective with LoRA at ``lr`` and training ``seed``; fills ``curve`` and returns
    the trainer (its pipeline carries the adapters) and the seconds per training step."""
    from diffalign.config import DataConfig, LoggingConfig, LoRAConfig, ModelConfig, OptimConfig, TrainConfig
    from diffalign.training import Trainer

    settings = run_settings(config, objective)
    # The online objectives count updates of their own (a collection makes several), not passes over pairs.
    own = settings.pop("max_steps", None)
    steps = config.train_steps or own or config.steps_for(len(PreferenceDataset.open(data)))
    train_config = TrainConfig(
        # Uncached: the reward curve samples from the trained pipeline, which needs its text encoders.
        model=ModelConfig(path=str(base)), data=DataConfig(path=str(data), resolution=32, cache=False),
        optim=OptimConfig(lr=lr, lr_scheduler="constant_with_warmup", warmup_steps=round(config.warmup_fraction * steps),
                          weight_decay=0.0),
        lora=LoRAConfig(rank=config.lora_rank, alpha=float(config.lora_rank)),
        **settings, output_dir=str(out), seed=seed,
        # Each benchmark run trains every objective again, into the same folders.
        max_steps=steps, batch_size=config.batch_size, checkpoint_every=0, overwrite=True,
        logging=LoggingConfig(report_to="none", every=config.curve_every, progress_bar=progress),
    )
    trainer = Trainer(train_config)
    if objective == ORACLE:
        trainer.step.scorer = ToyRewardScorer().to(trainer.family.device)
    sampling_seconds, window = 0.0, []

    def on_step(step, trainer):
        nonlocal sampling_seconds
        score = trainer.step.metrics().get("spo/preference_score")
        if score is not None:
            window.append(float(score))
        if step % config.curve_every == 0 or step == steps:
            began = time.perf_counter()
            curve.points.append((step, *curve.sample(trainer.family.pipe)))
            if window:
                curve.proxy.append((step, sum(window) / len(window)))
                window.clear()
            sampling_seconds += time.perf_counter() - began

    began = time.perf_counter()
    trainer.run(on_step=on_step)
    # Training alone: the curve samples taken between steps are not the objective's cost.
    seconds = (time.perf_counter() - began - sampling_seconds) / steps
    totals = getattr(trainer.step, "totals", None)  # a sampling step's rollout and training seconds
    if totals is not None:
        curve.parts = {f"{part}_seconds_per_step": round(value / steps, 4) for part, value in totals.items()}
    return trainer, seconds


def choose_lr(sweep: dict[float, list], base_following: float, tolerance: float = 0.05) -> float:
    """The learning rate whose curve ends highest, among those whose curve-seed prompt following
    ends within ``tolerance`` of the base's (all of them if none does). ``sweep``: lr → curve points."""
    fair = {lr: points for lr, points in sweep.items() if points[-1][2] >= base_following - tolerance} or sweep
    return max(fair, key=lambda lr: fair[lr][-1][1])


RECORD = ".toy-benchmark.json"
"""Marks a folder the benchmark wrote: a later run replaces what it holds."""


def run_benchmark(out: str | Path, config: BenchmarkConfig = BenchmarkConfig(), cache: Path | None = None,
                  progress: bool = True) -> dict:
    """Run the whole benchmark into ``out``; returns the results (also in ``results.json``)."""
    from diffalign.outputs import refuse_unless_empty
    from diffalign.toy.report import write_report

    out = Path(out)
    if not (out / RECORD).is_file():  # a new benchmark: never among someone else's files (diffalign.outputs)
        refuse_unless_empty(out, "--out", f"toy benchmark (its {RECORD})")
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD).write_text(json.dumps({"writer": "diffalign toy benchmark"}))
    start = time.time()
    base = base_model(config.pretrain, cache=cache, progress=progress)
    base_pipe = sampling_pipe(base)
    data = build_preference_data(base_pipe, out / "data", config, progress)
    pair_scores = [s for row in PreferenceDataset.open(data["pairs"]).column("scores") for s in row]
    eval_prompts, eval_seeds = grid(config.eval_seeds_per_prompt, offset=90_000_000 + config.seed * 1_000_000)
    curve_prompts, curve_seeds = grid(config.curve_seeds_per_prompt, offset=80_000_000)

    def sample_curve(pipe) -> tuple[float, float]:
        images = generate(sampling_pipe(pipe), curve_prompts, curve_seeds, config.inference_steps, config.guidance_scale)
        return float(toy_reward(images, curve_prompts).mean()), float(follows_prompt(images, curve_prompts).float().mean())

    base_images = generate(base_pipe, eval_prompts, eval_seeds, config.inference_steps, config.guidance_scale)
    base_rewards = toy_reward(base_images, eval_prompts)
    base_curve = sample_curve(base_pipe)
    results = {
        "config": to_dict(config), "base_model": str(base),
        "pretrain": json.loads((base / "pretrain.json").read_text()),
        "base": {"reward": float(base_rewards.mean()),
                 "prompt_following": float(follows_prompt(base_images, eval_prompts).float().mean()),
                 "curve_reward": base_curve[0], "curve_following": base_curve[1]},
        "data": {"reward_spread": round(max(pair_scores) - min(pair_scores), 4), "pairs": len(pair_scores) // 2},
        "objectives": {},
    }
    grids, config = {}, replace(config, objective_settings=copy.deepcopy(config.objective_settings))
    check_runs(config.objectives)
    if any(objective_of(run) == "spo" for run in config.objectives):
        step_aware = train_step_aware_model(base, data["step_aware_pairs"], out / "step_aware", config, progress)
        results["step_aware"] = step_aware
        config.objective_settings["spo"]["rollout"]["preference_model"] = step_aware["model"]

    def train(objective: str, lr: float, seed: int, updates: int | None = None):
        kind = objective_of(objective)
        folder = data["ranked" if kind == "rank_dpo" else "experts" if kind == "diffusion_dro" else "pairs"]
        curve = Curve(sample_curve, points=[(0, *base_curve)])
        name = f"lr{lr:g}-seed{seed}" + ("" if updates is None else f"-{updates}-updates")
        trainer, seconds = align(objective, base, folder, out / "runs" / objective / name,
                                 config if updates is None else replace(config, train_steps=updates),
                                 curve, lr, seed, progress)
        return trainer, {"lr": lr, "seed": seed, "curve": curve.points, "proxy": curve.proxy,
                         "seconds_per_step": round(seconds, 4), **curve.parts}

    def evaluate(trainer, run: dict) -> torch.Tensor:
        images = generate(sampling_pipe(trainer.family.pipe), eval_prompts, eval_seeds, config.inference_steps,
                          config.guidance_scale)
        run.update(sample_summary(toy_reward(images, eval_prompts), base_rewards, follows_prompt(images, eval_prompts)))
        run["weights"] = str(trainer.config.output_dir)
        run.update(watch(run))
        return images

    # Diffusion-DPO first: its training time is the budget of the equal-time runs.
    for objective in tqdm(sorted(config.objectives, key=lambda o: o != "diffusion_dpo"), desc="objectives",
                          disable=not progress):
        began = time.time()
        lrs = config.lr_sweep or (config.lr or TOY_LR[objective_of(objective)],)
        sweep, trainers = {}, {}
        for lr in lrs:
            trainers[lr], sweep[lr] = train(objective, lr, config.seed)
            if len(lrs) > 1:  # only the chosen rate's trainer is kept
                best = choose_lr({k: v["curve"] for k, v in sweep.items()}, base_curve[1])
                trainers = {best: trainers[best]}
        chosen = choose_lr({k: v["curve"] for k, v in sweep.items()}, base_curve[1])
        grids[objective] = evaluate(trainers.pop(chosen), sweep[chosen])
        runs = [sweep[chosen]]
        for seed in range(config.seed + 1, config.seed + config.train_seeds):
            trainer, run = train(objective, chosen, seed)
            evaluate(trainer, run)
            runs.append(run)
        results["objectives"][objective] = objective_summary(runs, sweep, results["base"]["reward"], began)
        dpo = results["objectives"].get("diffusion_dpo")
        if config.equal_time and dpo is not None and objective != "diffusion_dpo":
            budget = dpo["curve"][-1][0] * dpo["seconds_per_step"]
            short = []
            for run in runs:  # as many updates as this objective's seconds per update fit in DPO's time
                updates = max(1, int(budget // run["seconds_per_step"]))
                trainer, short_run = train(objective, chosen, run["seed"], updates)
                evaluate(trainer, short_run)
                short.append({**short_run, "updates": updates})
            results["objectives"][objective]["equal_time"] = {"budget_seconds": round(budget, 1),
                                                              **runs_summary(short)}
    step_costs(results["objectives"])
    equal_time(results["objectives"])
    results["wall_seconds"] = round(time.time() - start, 1)
    write_report(out, results, base_images, grids, eval_prompts, config.eval_seeds_per_prompt)
    return results
