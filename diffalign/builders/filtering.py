"""Noisy-pair filtering in the spirit of FiFA (Yang et al., 2024, "Automated Filtering of Human
Feedback Data for Aligning Text-to-Image Diffusion Models").

Each row (a pair, or a group read as best vs worst) gets three terms:

- **margin**: a proxy reward's margin ``r(best) − r(worst)``: rescored by a reward model on the
  stored images, or taken from the ``scores`` column. A near-tie is likely label noise, a clear
  margin a reliable preference;
- **quality** of the prompt, in [0, 1] (:func:`prompt_quality`): a text heuristic (the paper
  asks an LLM; any ``callable(prompt) -> float`` can be passed instead);
- **diversity**: the row's share of the k-nearest-neighbour (Kozachenko–Leonenko) entropy
  estimate of the prompts' text embeddings, ``log(ε + ρ_k(i))`` with ``ρ_k(i)`` the distance to
  the ``k``-th nearest other prompt: prompts in crowded regions (near-duplicates) score low.

Each term is standardised over the dataset (z-score) and the weighted sum ranks the rows; the top
``round(fraction · N)`` are kept, written in their original order. FiFA optimises the set as a
whole; this per-row score is its first-order (one-pass) form. ``filter_report.jsonl`` holds
every row's terms, total, rank and whether it was kept; the manifest summarises them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from diffalign.arguments import COUNT, number
from diffalign.data.writer import BuildError, ShardWriter, add_writer_arguments, atomic_write_bytes

if TYPE_CHECKING:
    import torch

BUILDER = "filter"
REPORT = "filter_report.jsonl"
TERMS = ("margin", "quality", "diversity")


def prompt_quality(prompt: str) -> float:
    """A text heuristic in [0, 1]: ``min(1, words / 5) · letters / visible chars · unique words / words``.

    Short, symbol-heavy or repetitive prompts score low; "a watercolor painting of a fox" = 1 · 1 · 5/6.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    visible = [c for c in prompt if not c.isspace()]
    if not words or not visible:
        return 0.0
    letters = sum(c.isalpha() for c in visible) / len(visible)
    return min(1.0, len(words) / 5) * letters * len(set(words)) / len(words)


def hashing_embeddings(prompts: Sequence[str], dim: int = 512) -> torch.Tensor:
    """``[N, dim]`` unit vectors of hashed word and character-trigram counts: a model-free text
    embedding (deterministic: a fixed polynomial hash, not Python's salted ``hash``)."""
    import torch

    out = torch.zeros(len(prompts), dim)
    for i, prompt in enumerate(prompts):
        text = " ".join(prompt.lower().split())
        features = text.split() + [text[j:j + 3] for j in range(max(0, len(text) - 2))]
        for feature in features:
            h = 0
            for char in feature:
                h = (h * 131 + ord(char)) % 1_000_000_007
            out[i, h % dim] += 1.0
    return torch.nn.functional.normalize(out, dim=1)


def model_embeddings(prompts: Sequence[str], model_path: str, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """``[N, D]`` unit text embeddings from a transformers model (hub id or folder): CLIP text
    features where the model has them, else the attention-masked mean of the last hidden state."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    max_length = min(getattr(tokenizer, "model_max_length", 77), 512)
    parts = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            if hasattr(model, "get_text_features"):
                features = model.get_text_features(**batch)
            else:
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                features = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            parts.append(features.float().cpu())
    return torch.nn.functional.normalize(torch.cat(parts), dim=1)


def knn_entropy_terms(embeddings: torch.Tensor, k: int = 5, eps: float = 1e-6) -> torch.Tensor:
    """``[N]`` per-point terms ``log(ε + ρ_k(i))`` of the Kozachenko–Leonenko entropy estimate
    ``Ĥ = d/N · Σ_i log ρ_k(i) + const``, ``ρ_k(i)`` = Euclidean distance from point ``i`` to its
    ``k``-th nearest other point (``k`` is capped at ``N − 1``)."""
    import torch

    n = embeddings.shape[0]
    if n < 2:
        return torch.zeros(n)
    k = min(k, n - 1)
    distances = torch.cdist(embeddings.double(), embeddings.double())
    distances.fill_diagonal_(float("inf"))
    kth = distances.topk(k, dim=1, largest=False).values[:, -1]
    return torch.log(eps + kth).float()


def standardise(values: torch.Tensor) -> torch.Tensor:
    """``(v − mean) / std`` (population std); all zeros when the values are all equal."""
    import torch

    values = values.double()
    std = values.std(correction=0)
    return torch.zeros_like(values) if not std > 0 else (values - values.mean()) / std


def reward_margins(data, reward) -> torch.Tensor:
    """``[N]`` margins ``r(first image) − r(last image)`` of every row, rescored by ``reward``."""
    import torch

    from diffalign.data.images import decode

    out = []
    for row in data:
        images = [decode(data.image_bytes(row["images"][0])), decode(data.image_bytes(row["images"][-1]))]
        scores = reward.score(images, row["prompt"])
        out.append((scores[0] - scores[1]).item())
    return torch.tensor(out)


def score_rows(prompts: Sequence[str], margins: torch.Tensor, *, embeddings: torch.Tensor,
               weights: dict[str, float], k: int = 5, quality: Callable[[str], float] = prompt_quality) -> dict:
    """The three raw terms, their z-scores and the weighted total, each ``[N]``."""
    import torch

    raw = {
        "margin": margins.double(),
        "quality": torch.tensor([float(quality(p)) for p in prompts], dtype=torch.float64),
        "diversity": knn_entropy_terms(embeddings, k).double(),
    }
    z = {name: standardise(values) for name, values in raw.items()}
    total = sum(weights.get(name, 0.0) * z[name] for name in TERMS)
    return {"raw": raw, "z": z, "total": total}


def select_top(total: torch.Tensor, fraction: float) -> list[int]:
    """Indices of the ``round(fraction · N)`` highest totals (ties: earlier rows first), sorted."""
    if not 0 < fraction <= 1:
        raise BuildError(f"the fraction to keep must be in (0, 1], got {fraction}")
    n_keep = round(fraction * len(total))
    order = sorted(range(len(total)), key=lambda i: (-float(total[i]), i))
    return sorted(order[:n_keep])


def filter_pairs(
    data_dir: str | Path,
    out: str | Path,
    *,
    fraction: float = 0.5,
    weights: dict[str, float] | None = None,
    reward=None,
    text_model: str | None = None,
    k: int = 5,
    quality: Callable[[str], float] = prompt_quality,
    shard_size: int = 1000,
    overwrite: bool = False,
) -> dict:
    """Keep the top ``fraction`` of a preference dataset's rows by margin, prompt quality and diversity.

    Args:
        data_dir: a preference dataset (pairs, or groups read as best vs worst; not K = 1).
        out: the filtered dataset folder.
        fraction: share of rows to keep (exactly ``round(fraction · N)``).
        weights: weight per term (default ``{"margin": 1, "quality": 1, "diversity": 1}``).
        reward: a reward model to rescore the margin; ``None``: the stored ``scores``.
        text_model: transformers model for the prompt embeddings; ``None``: :func:`hashing_embeddings`.
        k: neighbour of the entropy estimate.
        quality: prompt-quality function.

    Returns:
        The manifest (with ``filter`` holding the summary); ``out/filter_report.jsonl`` holds the rows.
    """
    import torch

    from diffalign.data.dataset import PreferenceDataset

    weights = {name: 1.0 for name in TERMS} | dict(weights or {})
    unknown = sorted(set(weights) - set(TERMS))
    if unknown:
        raise BuildError(f"unknown filtering term(s) {unknown}; the terms are {list(TERMS)}")
    data = PreferenceDataset.open(data_dir)
    if data.group_size < 2:
        raise BuildError(
            f"{data_dir} has one image per prompt (K = {data.group_size}, an expert dataset): the filter ranks pairs "
            "by the margin between their best and worst image, which needs K ≥ 2. Filter the pair dataset it "
            "was built from, then run `diffalign build experts` on the result"
        )
    options = dict(data=str(Path(data_dir).resolve()), fraction=fraction, weights=weights, k=k,
                   reward=reward.label if reward is not None else "stored scores", text_model=text_model,
                   quality=getattr(quality, "__name__", "custom"), shard_size=shard_size)
    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs=_inputs(data_dir, text_model), outputs=(REPORT,))
    if writer.complete:
        return writer.finish()
    prompts = data.column("prompt")
    if reward is not None:
        margins = reward_margins(data, reward)
    else:
        scores = data.column("scores")
        missing = [i for i, s in enumerate(scores) if not s or not all(math.isfinite(v) for v in (s[0], s[-1]))]
        if missing:
            raise BuildError(f"{data_dir}: row {missing[0]} (and {len(missing) - 1} more) has no scores, or a score that "
                             "is not a finite number; pass a reward model to rescore the margins")
        margins = torch.tensor([s[0] - s[-1] for s in scores])
    embeddings = model_embeddings(prompts, text_model) if text_model else hashing_embeddings(prompts)
    result = score_rows(prompts, margins, embeddings=embeddings, weights=weights, k=k, quality=quality)
    kept = set(select_top(result["total"], fraction))
    ranking = sorted(range(len(prompts)), key=lambda i: (-float(result["total"][i]), i))
    rank_of = {i: r for r, i in enumerate(ranking)}
    ids = data.column("id")
    lines = []
    for i in range(len(prompts)):
        contributions = {name: weights[name] * float(result["z"][name][i]) for name in TERMS if weights[name]}
        lines.append(json.dumps({
            "id": ids[i], "kept": i in kept, "rank": rank_of[i], "total": float(result["total"][i]),
            **{name: float(result["raw"][name][i]) for name in TERMS},
            "contributions": contributions,
            # the term that helped a kept row most, or held a dropped row back most
            "main_reason": (max if i in kept else min)(contributions, key=contributions.get) if contributions else None,
        }))
    atomic_write_bytes(Path(out) / REPORT, ("\n".join(lines) + "\n").encode())
    for position in range(writer.position, len(data)):
        if position in kept:
            writer.add(data[position])
        else:
            writer.drop("below_cutoff")
        writer.advance(position + 1)
    kept_sorted = sorted(kept)
    cutoff = min(float(result["total"][i]) for i in kept_sorted) if kept_sorted else None
    summary = {
        "fraction": fraction, "input_rows": len(prompts), "kept_rows": len(kept), "cutoff_total": cutoff,
        "weights": weights, "report": REPORT,
        "mean_kept": {name: _mean(result["raw"][name], kept_sorted) for name in TERMS},
        "mean_dropped": {name: _mean(result["raw"][name], [i for i in range(len(prompts)) if i not in kept]) for name in TERMS},
    }
    return writer.finish({"group_size": data.group_size, "reward_models": data.manifest.get("reward_models", []),
                          "filter": summary})


def _mean(values: torch.Tensor, index: list[int]) -> float | None:
    return float(values[index].mean()) if index else None


def _weights(items: Sequence[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise BuildError(f"--weight takes TERM=W, got {item!r}")
        out[name] = float(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``diffalign build filter`` and ``datasets_builders/filter_pairs.py``."""
    parser.add_argument("data", help="preference dataset folder to filter")
    parser.add_argument("--out", required=True, help="folder of the filtered dataset")
    parser.add_argument("--fraction", type=number(0, 1, above=True), default=0.5, help="share of rows to keep (default: 0.5)")
    parser.add_argument("--weight", action="append", metavar="TERM=W",
                        help=f"weight of a term ({', '.join(TERMS)}; default 1 each); repeatable")
    parser.add_argument("--reward", default=None, help="reward model rescoring the margin (default: the stored scores)")
    parser.add_argument("--reward-path", default=None, help="weights of --reward (folder, file or hub id)")
    parser.add_argument("--text-model", default=None, help="transformers model for prompt embeddings (default: hashed n-grams)")
    parser.add_argument("--k", type=COUNT, default=5, help="k of the k-nearest-neighbour entropy (default: 5)")
    add_writer_arguments(parser, progress=False)


def _inputs(data_dir, text_model, reward_path=None) -> dict:
    return {"data": data_dir, "--text-model": text_model, "--reward-path": reward_path}


def run(args: argparse.Namespace) -> int:
    """Run the filter from parsed arguments; prints what was kept."""
    import torch

    from diffalign.data.records import check_output

    check_output(args.out, BUILDER, _inputs(args.data, args.text_model, args.reward_path))  # before weights load
    reward = None
    if args.reward:
        from diffalign.rewards import load_reward

        reward = load_reward(args.reward, args.reward_path, device="cuda" if torch.cuda.is_available() else "cpu")
    manifest = filter_pairs(args.data, args.out, fraction=args.fraction, weights=_weights(args.weight),
                            reward=reward, text_model=args.text_model, k=args.k, shard_size=args.shard_size,
                            overwrite=args.overwrite)
    summary = manifest["filter"]
    print(f"kept {summary['kept_rows']} of {summary['input_rows']} rows in {args.out} "
          f"(report: {Path(args.out) / REPORT}); mean terms kept {summary['mean_kept']}, dropped {summary['mean_dropped']}")
    return 0
