"""The toy benchmark's samples: images drawn from a toy pipeline on fixed seeds, and the preference
data built from them (ranked groups, best-vs-worst pairs with captions, experts, the step-aware
model's pairs), every image scored by the toy reward."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffalign.data.writer import ShardWriter
from diffalign.toy.reward import colour_coverage, toy_reward
from diffalign.toy.world import COLOURS, PROMPTS, parse


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 32,
             progress: str | None = None) -> torch.Tensor:
    """``[N, 3, 32, 32]`` in [0, 1], image i drawn from its own ``seeds[i]`` (batch-independent);
    ``progress``: the description of a progress bar over the batches (none without)."""
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(prompts), batch), desc=progress, unit="batch", disable=progress is None):
        chunk = slice(start, start + batch)
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        images = pipe(prompts[chunk], num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                      height=32, width=32, output_type="pt").images
        out.append(images.float().cpu())
    return torch.cat(out)


def sampling_pipe(path_or_pipe):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = path_or_pipe if not isinstance(path_or_pipe, (str, Path)) else StableDiffusionPipeline.from_pretrained(str(path_or_pipe))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def grid(seeds_per_prompt: int, offset: int) -> tuple[list[str], list[int]]:
    """Every prompt ``seeds_per_prompt`` times, each image with its own seed from ``offset`` on."""
    prompts = [p for p in PROMPTS for _ in range(seeds_per_prompt)]
    return prompts, [offset + i for i in range(len(prompts))]


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


def build_preference_data(pipe, out: Path, config, progress: bool = False) -> dict[str, Path]:
    """Sample and score ``samples_per_prompt`` images per prompt; write ranked groups, best-vs-worst
    pairs, experts (each group's best alone, K = 1) and the step-aware model's training pairs
    (each group's best against every other image). Returns the folders by those names."""
    n = config.samples_per_prompt
    prompts, seeds = grid(n, offset=10_000 + config.seed * 1_000_000)
    images = generate(pipe, prompts, seeds, config.inference_steps, config.guidance_scale,
                      progress="preference data" if progress else None)
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


__all__ = ["build_preference_data", "caption", "generate", "grid", "sampling_pipe", "tensor_png"]
