"""Reward scores of generated folders, and candidate-vs-base statistics on identical seeds.

Protocol (``shared/research/rewards_eval.md`` §3.1): both folders hold the same prompts with the
same per-image seeds; every image is scored by each reward with the same preprocessing. Per
reward: mean score per checkpoint, the paired gain, and the win-rate (a pair is won when the
candidate scores higher, a tie counts ½), each with a 95 % bootstrap interval *over prompts*
(pairs are averaged per prompt first). For PickScore also the pick probability: the mean over
pairs of ``group_probs([base, candidate])[candidate]`` (the softmax PickScore was trained to give).
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffalign.evaluation.generate import sample_path
from diffalign.evaluation.stats import bootstrap_mean, pair_wins, paired_gain


def _image(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _sample(folder, index: int, k: int, video: bool):
    """A PIL image, or a video as float ``[F, 3, H, W]`` in [0, 1] (what video rewards take)."""
    if not video:
        return _image(sample_path(folder, index, k))
    from diffalign.data.videos import read_frames

    return read_frames(sample_path(folder, index, k, video=True)).float() / 255


def score_folder(folder: str | Path, prompts: list[str], samples: int, rewards: list, batch_size: int = 16,
                 progress: bool = False, video: bool = False) -> dict[str, torch.Tensor]:
    """``{reward label: scores [P, K]}`` of ``<folder>/<index>/samples/<k>.png`` for ``P`` prompts, ``K`` samples
    (``<k>.mp4`` clips under ``video``, scored by video rewards)."""
    from tqdm.auto import tqdm

    jobs = [(i, k) for i in range(len(prompts)) for k in range(samples)]
    out = {r.label: torch.empty(len(jobs)) for r in rewards}
    bar = tqdm(total=len(jobs), desc=f"scoring {Path(folder).name}", unit="video" if video else "image",
               disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        images = [_sample(folder, i, k, video) for i, k in chunk]
        texts = [prompts[i] for i, _ in chunk]
        for reward in rewards:
            out[reward.label][start : start + len(chunk)] = reward.score(images, texts).float().cpu()
        bar.update(len(chunk))
    bar.close()
    return {label: scores.view(len(prompts), samples) for label, scores in out.items()}


def pick_probability(reward, base: str | Path, candidate: str | Path, prompts: list[str], samples: int) -> torch.Tensor:
    """``[P, K]``: per pair, the probability ``reward.group_probs`` gives the candidate image."""
    probs = torch.empty(len(prompts), samples)
    for i, prompt in enumerate(prompts):
        for k in range(samples):
            pair = [_image(sample_path(base, i, k)), _image(sample_path(candidate, i, k))]
            probs[i, k] = reward.group_probs(pair, prompt)[1].float().cpu()
    return probs


def compare_scores(base: torch.Tensor, candidate: torch.Tensor, seed: int = 0) -> dict:
    """Statistics of one reward's scores ``[P, K]`` for base and candidate (same prompts and seeds).

    Returns:
        ``{"base", "candidate", "gain", "win_rate"}`` as interval dicts (bootstrap over the P prompts),
        plus ``"n_prompts"`` and ``"n_pairs"``.
    """
    if base.shape != candidate.shape:
        raise ValueError(f"score shapes differ: base {tuple(base.shape)} vs candidate {tuple(candidate.shape)}")
    per_prompt = lambda x: x.double().mean(1)  # noqa: E731  [P, K] -> [P]
    return {
        "base": bootstrap_mean(per_prompt(base), seed=seed).as_dict(),
        "candidate": bootstrap_mean(per_prompt(candidate), seed=seed).as_dict(),
        "gain": paired_gain(per_prompt(candidate), per_prompt(base), seed=seed).as_dict(),
        "win_rate": bootstrap_mean(pair_wins(candidate, base).mean(1), seed=seed).as_dict(),
        "n_prompts": base.shape[0], "n_pairs": base.numel(),
    }
