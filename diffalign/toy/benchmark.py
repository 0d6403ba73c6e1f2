"""The toy alignment benchmark: does training with an objective make the model *better*?

1. Pretrain (or load from the cache) the tiny SD1.5-style base model of the toy world.
2. Sample several images per prompt from it, score them with the toy reward, and write
   preference data: ranked groups (best first, with scores), best-vs-worst pairs, and for DCPO
   a caption per image ("a large red circle" / "a small red circle", from its measured size).
3. Align the base model with each objective (LoRA), tracking the reward of samples on a few
   fixed seeds during training.
4. Sample fresh images on held-out seeds, the same for the base and every aligned model, and
   report the mean reward before and after, the paired gain with a 95 % bootstrap interval,
   the win-rate against the base, the prompt-following fraction and the wall time.

Outputs in the run folder: ``results.json``, ``report.md``, ``reward_curve.png`` and
``grid_<objective>.png`` (base above, aligned below, same seeds).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffalign.config import to_dict
from diffalign.data.dataset import PreferenceDataset
from diffalign.data.writer import ShardWriter
from diffalign.evaluation.stats import paired_gain, win_rate
from diffalign.toy.pretrain import PretrainConfig, base_model
from diffalign.toy.reward import colour_coverage, follows_prompt, toy_reward
from diffalign.toy.world import COLOURS, PROMPTS, parse

TOY_REWARD_SPREAD = 0.374
"""Max − min of the toy reward over the toy benchmark's 64 pairs at seed 0 (each run records its
own in ``results.json`` as ``data.reward_spread``); the mean pair's gap, 0.138, gives SmPO a
label p = 0.59."""

# Per-objective training settings for the toy (LoRA rank 8): the strengths the papers use are
# calibrated for 2000+ steps at batch 2048; a few hundred small steps need a stronger signal.
DEFAULT_OBJECTIVES = {
    "diffusion_dpo": {"objective": {"name": "diffusion_dpo", "beta": 1000.0}},
    # Reference-free, MaPO's margin on the toy measures how hard each image is to denoise (the
    # preferred, larger shapes are easier: saturated from step 1), and in 150 steps a stronger λ or
    # T only unlearns the rejected images. Swept λ ∈ {0.01, 0.1, 1} × T ∈ {1e3, 1e4, 1e5}: the gain
    # falls as λ·T grows (+0.032, +0.014, then −0.09 to −0.12), all below SFT's +0.040; only
    # λ = 0.01 clears chance, so the toy's MaPO is close to SFT on the preferred image.
    "mapo": {"objective": {"name": "mapo", "beta_mapo": 0.01, "snr_value": 0.5}},
    "dcpo": {"objective": {"name": "dcpo", "beta": 1000.0}},
    "rank_dpo": {"objective": {"name": "rank_dpo", "beta": 1000.0}},
    "sft": {"objective": {"name": "sft"}},
    # Diffusion-DPO's toy β on inverted latents; the inversion as the objectives' defaults.
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
}


ALL_OBJECTIVES = tuple(DEFAULT_OBJECTIVES)


@dataclass
class BenchmarkConfig:
    objectives: tuple[str, ...] = ALL_OBJECTIVES
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    samples_per_prompt: int = 32
    group_size: int = 4
    inference_steps: int = 20
    guidance_scale: float = 4.0
    train_steps: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    lora_rank: int = 8
    eval_seeds_per_prompt: int = 16
    curve_every: int = 25
    curve_seeds_per_prompt: int = 2
    step_aware_steps: int = 300
    """Training steps of the toy's step-aware preference model (SPO)."""
    seed: int = 0
    objective_settings: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_OBJECTIVES))
    """Per objective, the training config's ``objective:`` block and its step's block (``rollout:``)."""


# --------------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 32) -> torch.Tensor:
    """``[N, 3, 32, 32]`` in [0, 1], image i drawn from its own ``seeds[i]`` (batch-independent)."""
    out = []
    for start in range(0, len(prompts), batch):
        chunk = slice(start, start + batch)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        images = pipe(prompts[chunk], num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                      height=32, width=32, output_type="pt").images
        out.append(images.float().cpu())
    return torch.cat(out)


def _sampling_pipe(path_or_pipe):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = path_or_pipe if not isinstance(path_or_pipe, (str, Path)) else StableDiffusionPipeline.from_pretrained(str(path_or_pipe))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _grid(seeds_per_prompt: int, offset: int) -> tuple[list[str], list[int]]:
    """Every prompt ``seeds_per_prompt`` times, each image with its own seed from ``offset`` on."""
    prompts = [p for p in PROMPTS for _ in range(seeds_per_prompt)]
    return prompts, [offset + i for i in range(len(prompts))]


# --------------------------------------------------------------------------------- data
def tensor_png(image: torch.Tensor) -> bytes:
    """``[3, H, W]`` in [0, 1] as PNG bytes."""
    from torchvision.transforms.functional import to_pil_image

    from diffalign.builders.synthetic import png_bytes

    return png_bytes(to_pil_image(image.clamp(0, 1)))


def caption(image: torch.Tensor, prompt: str) -> str:
    """A caption of what the image shows: the prompt with a size word from the object's coverage."""
    colour, shape = parse(prompt)
    coverage = colour_coverage(image[None])[0, list(COLOURS).index(colour)]
    return f"a {'large' if coverage > 0.15 else 'small'} {colour} {shape}"


def build_preference_data(pipe, out: Path, config: BenchmarkConfig) -> dict[str, Path]:
    """Sample and score ``samples_per_prompt`` images per prompt; write ranked groups, best-vs-worst
    pairs, experts (each group's best alone, K = 1) and the step-aware model's training pairs
    (each group's best against every other image). Returns the folders by those names."""
    n = config.samples_per_prompt
    prompts, seeds = _grid(n, offset=10_000 + config.seed * 1_000_000)
    images = generate(pipe, prompts, seeds, config.inference_steps, config.guidance_scale)
    rewards = toy_reward(images, prompts)
    ranked = ShardWriter(out / "ranked", builder="toy", options={"seed": config.seed}, overwrite=True)
    pairs = ShardWriter(out / "pairs", builder="toy", options={"seed": config.seed}, overwrite=True)
    spm_pairs = ShardWriter(out / "step_aware_pairs", builder="toy", options={"seed": config.seed}, overwrite=True)
    k = config.group_size
    for p, prompt in enumerate(PROMPTS):
        for g in range(n // k):
            idx = torch.arange(p * n + g * k, p * n + (g + 1) * k)
            order = idx[rewards[idx].argsort(descending=True)]
            row_id = f"{p:02d}-{g:03d}"
            ranked.add({"id": row_id, "prompt": prompt, "images": [{"bytes": tensor_png(images[i]), "path": None} for i in order],
                        "scores": rewards[order].tolist(), "ranks": list(range(k)), "captions": None,
                        "source": "toy", "meta": json.dumps({"seeds": [seeds[i] for i in order]})})
            best, worst = order[0], order[-1]
            pairs.add({"id": row_id, "prompt": prompt, "images": [{"bytes": tensor_png(images[i]), "path": None} for i in (best, worst)],
                       "scores": [float(rewards[best]), float(rewards[worst])], "ranks": [0, 1],
                       "captions": [caption(images[best], prompt), caption(images[worst], prompt)],
                       "source": "toy", "meta": json.dumps({"seeds": [seeds[best], seeds[worst]]})})
            for j, other in enumerate(order[1:]):
                spm_pairs.add({"id": f"{row_id}-{j}", "prompt": prompt, "scores": [float(rewards[best]), float(rewards[other])],
                               "images": [{"bytes": tensor_png(images[i]), "path": None} for i in (best, other)],
                               "ranks": [0, 1], "captions": None, "source": "toy", "meta": None})
    ranked.finish({"group_size": k, "reward_models": ["toy_coverage"]})
    pairs.finish({"group_size": 2, "reward_models": ["toy_coverage"]})
    spm_pairs.finish({"group_size": 2, "reward_models": ["toy_coverage"]})
    from diffalign.builders.experts import build_experts

    build_experts(out / "pairs", out / "experts", overwrite=True, progress=False)
    return {name: out / name for name in ("pairs", "ranked", "experts", "step_aware_pairs")}


def train_step_aware_model(base: Path, data: Path, out: Path, config: BenchmarkConfig, progress: bool = True) -> dict:
    """SPO's step-aware preference model for the toy: a tiny CLIP (:func:`~diffalign.rewards.tiny.tiny_step_aware`,
    random weights) trained on the toy's pairs on the base model's ``x̂0``, as the paper trains
    its on Pick-a-Pic. Returns the held-out pair accuracy (a quarter of the pairs never train)
    and the model folder."""
    from diffalign.training.step_aware import SPMTrainConfig, train_step_aware
    from diffalign.rewards.tiny import tiny_step_aware

    init = tiny_step_aware(seed=config.seed).save_pretrained(out / "init")
    spm = SPMTrainConfig(data=str(data), base_model=str(base), out=str(out / "run"), init=str(init),
                         steps=config.step_aware_steps, batch_size=16, lr=1e-3, weight_decay=0.0, warmup_steps=0,
                         lr_scheduler="constant", guidance=config.guidance_scale, resolution=32,
                         heldout_fraction=0.25, checkpoint_every=0, seed=config.seed)
    result = train_step_aware(spm, progress=progress)
    return {"model": str(out / "run" / "final"), "heldout_accuracy": result}


# --------------------------------------------------------------------------------- alignment
def align(objective: str, base: Path, data: Path, out: Path, config: BenchmarkConfig, curve_fn,
          progress: bool = True) -> tuple[object, list, float]:
    """Train one objective with LoRA; returns the trainer (its pipeline carries the adapters), the
    reward curve ``[(step, mean reward), ...]`` and the seconds per training step."""
    from diffalign.config import DataConfig, LoggingConfig, LoRAConfig, ModelConfig, OptimConfig, TrainConfig
    from diffalign.training import Trainer

    train_config = TrainConfig(
        # Uncached: the reward curve samples from the trained pipeline, which needs its text encoders.
        model=ModelConfig(path=str(base)), data=DataConfig(path=str(data), resolution=32, cache=False),
        optim=OptimConfig(lr=config.lr, lr_scheduler="constant", weight_decay=0.0),
        lora=LoRAConfig(rank=config.lora_rank, alpha=float(config.lora_rank)),
        **copy.deepcopy(config.objective_settings[objective]), output_dir=str(out), seed=config.seed,
        # Each benchmark run trains every objective again, into the same folders.
        max_steps=config.train_steps, batch_size=config.batch_size, checkpoint_every=0, overwrite=True,
        logging=LoggingConfig(report_to="none", every=config.curve_every, progress_bar=progress),
    )
    trainer = Trainer(train_config)
    curve = [(0, curve_fn(trainer.family.pipe))]
    curve_seconds = 0.0

    def on_step(step, trainer):
        nonlocal curve_seconds
        if step % config.curve_every == 0:
            began = time.perf_counter()
            curve.append((step, curve_fn(trainer.family.pipe)))
            curve_seconds += time.perf_counter() - began

    began = time.perf_counter()
    trainer.run(on_step=on_step)
    # Training alone: the reward-curve samples taken between steps are not the objective's cost.
    return trainer, curve, (time.perf_counter() - began - curve_seconds) / config.train_steps


def _summary(rewards: torch.Tensor, base_rewards: torch.Tensor, follows: torch.Tensor) -> dict:
    gain = paired_gain(rewards, base_rewards)
    wins = win_rate(rewards, base_rewards)
    return {"reward": float(rewards.mean()), "gain": gain.as_dict(), "gain_excludes_zero": gain.excludes_zero(),
            "win_rate": wins.as_dict(), "prompt_following": float(follows.float().mean())}


def _step_costs(objectives: dict) -> None:
    """Each objective's training-step time as a multiple of Diffusion-DPO's in the same run."""
    dpo = objectives.get("diffusion_dpo")
    for summary in objectives.values():
        summary["step_cost_vs_dpo"] = round(summary["seconds_per_step"] / dpo["seconds_per_step"], 2) if dpo else None


RECORD = ".toy-benchmark.json"
"""Marks a folder the benchmark wrote: a later run replaces what it holds."""


def run_benchmark(out: str | Path, config: BenchmarkConfig = BenchmarkConfig(), cache: Path | None = None,
                  progress: bool = True) -> dict:
    """Run the whole benchmark into ``out``; returns the results (also in ``results.json``)."""
    from diffalign.toy.report import write_report

    from diffalign.outputs import refuse_unless_empty

    out = Path(out)
    if not (out / RECORD).is_file():  # a new benchmark: never among someone else's files (diffalign.outputs)
        refuse_unless_empty(out, "--out", f"toy benchmark (its {RECORD})")
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD).write_text(json.dumps({"writer": "diffalign toy benchmark"}))
    start = time.time()
    base = base_model(config.pretrain, cache=cache, progress=progress)
    base_pipe = _sampling_pipe(base)
    data = build_preference_data(base_pipe, out / "data", config)
    pair_scores = [s for row in PreferenceDataset.open(data["pairs"]).column("scores") for s in row]
    eval_prompts, eval_seeds = _grid(config.eval_seeds_per_prompt, offset=90_000_000 + config.seed * 1_000_000)
    curve_prompts, curve_seeds = _grid(config.curve_seeds_per_prompt, offset=80_000_000)

    def curve_fn(pipe):
        pipe = _sampling_pipe(pipe)
        images = generate(pipe, curve_prompts, curve_seeds, config.inference_steps, config.guidance_scale)
        return float(toy_reward(images, curve_prompts).mean())

    base_images = generate(base_pipe, eval_prompts, eval_seeds, config.inference_steps, config.guidance_scale)
    base_rewards = toy_reward(base_images, eval_prompts)
    base_follow = follows_prompt(base_images, eval_prompts)
    results = {
        "config": to_dict(config), "base_model": str(base),
        "pretrain": json.loads((base / "pretrain.json").read_text()),
        "base": {"reward": float(base_rewards.mean()), "prompt_following": float(base_follow.float().mean())},
        "data": {"reward_spread": round(max(pair_scores) - min(pair_scores), 4)},
        "objectives": {},
    }
    grids, config = {}, replace(config, objective_settings=copy.deepcopy(config.objective_settings))
    if "spo" in config.objectives:
        step_aware = train_step_aware_model(base, data["step_aware_pairs"], out / "step_aware", config, progress)
        results["step_aware"] = step_aware
        config.objective_settings["spo"]["rollout"]["preference_model"] = step_aware["model"]
    for objective in tqdm(config.objectives, desc="objectives", disable=not progress):
        began = time.time()
        folder = data["ranked" if objective == "rank_dpo" else "experts" if objective == "diffusion_dro" else "pairs"]
        trainer, curve, seconds_per_step = align(objective, base, folder, out / "runs" / objective, config, curve_fn,
                                                 progress)
        images = generate(_sampling_pipe(trainer.family.pipe), eval_prompts, eval_seeds, config.inference_steps,
                          config.guidance_scale)
        rewards = toy_reward(images, eval_prompts)
        summary = _summary(rewards, base_rewards, follows_prompt(images, eval_prompts))
        summary.update({"reward_before": results["base"]["reward"], "curve": curve,
                        "wall_seconds": round(time.time() - began, 1), "weights": str(trainer.config.output_dir),
                        "seconds_per_step": round(seconds_per_step, 4)})
        results["objectives"][objective] = summary
        grids[objective] = images
    _step_costs(results["objectives"])
    results["wall_seconds"] = round(time.time() - start, 1)
    write_report(out, results, base_images, grids, eval_prompts, config.eval_seeds_per_prompt)
    return results

