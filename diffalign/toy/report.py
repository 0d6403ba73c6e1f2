"""The toy benchmark's report: JSON, a Markdown table, the reward curve and image grids."""

from __future__ import annotations

import json
from pathlib import Path

import torch

COLUMNS = ("objective", "reward before", "reward after", "gain [95% CI]", "win-rate vs base [95% CI]",
           "prompt following", "step × DPO", "wall s")


def markdown_table(results: dict) -> str:
    base = results["base"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines.append(f"| base | {base['reward']:.4f} | – | – | – | {base['prompt_following']:.2f} | – | – |")
    for name, r in results["objectives"].items():
        g, w = r["gain"], r["win_rate"]
        lines.append(
            f"| {name} | {r['reward_before']:.4f} | {r['reward']:.4f} | {g['value']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
            f" | {w['value']:.2f} [{w['low']:.2f}, {w['high']:.2f}] | {r['prompt_following']:.2f}"
            f" | {_times(r.get('step_cost_vs_dpo'))} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _times(ratio) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["objectives"].items():
        steps, rewards = zip(*r["curve"])
        ax.plot(steps, rewards, marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean toy reward (coverage)")
    ax.set_title("Toy alignment: reward of samples during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


GRID_CELL = 128
"""Pixels per image side in the before/after grids: the toy's 32-px samples are enlarged (nearest
neighbour, so each pixel stays a sharp block) to be seen."""


def save_grid(before: torch.Tensor, after: torch.Tensor, prompts: list[str], seeds_per_prompt: int, path: Path) -> None:
    """Two rows: the first image of each prompt from the base (top) and the aligned model, each at
    least :data:`GRID_CELL` pixels wide."""
    import torch.nn.functional as F
    from torchvision.utils import save_image

    pick = torch.arange(0, len(prompts), seeds_per_prompt)
    images = torch.cat([before[pick], after[pick]])
    scale = max(1, -(-GRID_CELL // images.shape[-1]))
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, str(path), nrow=len(pick), padding=4, pad_value=1.0)


def write_report(out: Path, results: dict, base_images, grids: dict, prompts: list[str], seeds_per_prompt: int) -> None:
    """Write ``results.json``, ``report.md``, ``reward_curve.png`` and one grid per objective."""
    for name, images in grids.items():
        path = out / f"grid_{name}.png"
        save_grid(base_images, images, prompts, seeds_per_prompt, path)
        results["objectives"][name]["grid"] = str(path)
    plot_curves(results, out / "reward_curve.png")
    results["files"] = {"report": str(out / "report.md"), "plot": str(out / "reward_curve.png")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    intro = (
        "# Toy alignment benchmark\n\nReward: soft fraction of the image covered by the prompt's colour "
        f"(larger objects score higher). Base model {results['base_model']} (its pretraining took "
        f"{results['pretrain']['seconds']:.0f} s); "
        f"whole run {results['wall_seconds']:.0f} s. Gains are paired over the same prompts and seeds.\n\n"
    )
    (out / "report.md").write_text(intro + markdown_table(results) + step_aware_line(results))


def step_aware_line(results: dict) -> str:
    """SPO's step-aware model's held-out pair accuracy (chance is 0.5), when the run trained one."""
    if "step_aware" not in results:
        return ""
    held = results["step_aware"]["heldout_accuracy"]["heldout"]
    per_t = ", ".join(f"t = {t}: {a:.2f}" for t, a in held["accuracy"].items())
    return (f"\nSPO's step-aware preference model, trained on the toy's pairs: held-out pair accuracy "
            f"{held['mean']:.2f} over {held['pairs']} pairs (chance 0.50; {per_t}).\n")
