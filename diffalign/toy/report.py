"""The toy benchmark's report: JSON, a Markdown table, the reward curve and image grids."""

from __future__ import annotations

import json
from pathlib import Path

import torch

COLUMNS = ("objective", "lr", "reward after", "gain [95% CI], each training seed", "mean gain",
           "win-rate vs base", "prompt following", "s/step", "step × DPO")


def markdown_table(results: dict) -> str:
    """One row per objective at its chosen learning rate: each training seed's gain on the held-out
    evaluation seeds with its interval, their mean, the mean win-rate, the lowest prompt
    following over seeds and the step cost."""
    base = results["base"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines.append(f"| base | – | {base['reward']:.4f} | – | – | – | {base['prompt_following']:.2f} | – | – |")
    for name, r in results["objectives"].items():
        runs = r.get("runs") or [r]
        gains = "; ".join(f"{g['value']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]" for g in (run["gain"] for run in runs))
        reward = sum(run["reward"] for run in runs) / len(runs)
        lines.append(
            f"| {name} | {r.get('lr', 0):g} | {reward:.4f} | {gains} | {r.get('mean_gain', r['gain']['value']):+.4f}"
            f" | {r.get('mean_win_rate', r['win_rate']['value']):.2f}"
            f" | {r.get('min_prompt_following', r['prompt_following']):.2f} | {r['seconds_per_step']:.2f}"
            f" | {_times(r.get('step_cost_vs_dpo'))} |"
        )
    return "\n".join(lines) + "\n"


def sweep_table(results: dict) -> str:
    """The learning-rate sweep on the curve seeds (what the choice saw): the curve's last reward and
    prompt following per rate, the chosen one in bold. Empty without a sweep."""
    rows = {name: r["sweep"] for name, r in results["objectives"].items() if len(r.get("sweep", {})) > 1}
    if not rows:
        return ""
    lrs = sorted({lr for sweep in rows.values() for lr in sweep}, key=float)
    lines = ["| objective | " + " | ".join(f"lr {lr}" for lr in lrs) + " |", "|" + "---|" * (len(lrs) + 1)]
    for name, sweep in rows.items():
        chosen = f"{results['objectives'][name]['lr']:g}"
        cells = []
        for lr in lrs:
            if lr not in sweep:
                cells.append("–")
                continue
            _, reward, follows = sweep[lr]["curve"][-1]
            cell = f"{reward:.4f} ({follows:.2f})"
            cells.append(f"**{cell}**" if lr == chosen else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return ("\nLearning-rate sweep, training seed 0: the curve seeds' reward at the end (prompt following); "
            f"base {results['base']['curve_reward']:.4f} ({results['base']['curve_following']:.2f}); "
            "chosen in bold.\n\n" + "\n".join(lines) + "\n")


def cost_table(results: dict) -> str:
    """The sampling objectives' costs beside Diffusion-DPO's (same run): seconds per update, split
    into sampling, scoring and the terms' forwards where the step reports it, the step cost × DPO's,
    and the curve seeds' reward at the end and after Diffusion-DPO's whole training time. Empty without DPO."""
    rows = {n: r for n, r in results["objectives"].items() if "at_dpo_time" in r}
    if "diffusion_dpo" not in rows:
        return ""
    lines = ["| objective | updates | s/update | rollout s | scoring s | forwards s | backward and optimiser s "
             "| step × DPO | curve reward at the end | at DPO's time (updates) |", "|" + "---|" * 10]
    for name, r in rows.items():
        at, total = r["at_dpo_time"], r["seconds_per_step"]
        rollout, scoring, forwards = (r.get(f"{part}_seconds_per_step") for part in ("rollout", "scoring", "train"))
        rest = "–" if rollout is None else f"{total - rollout - (scoring or 0) - forwards:.2f}"
        lines.append(f"| {name} | {r['curve'][-1][0]} | {total:.2f} | {_seconds(rollout)} | {_seconds(scoring)}"
                     f" | {_seconds(forwards)} | {rest} | {_times(r.get('step_cost_vs_dpo'))} | {r['curve'][-1][1]:.4f}"
                     f" | {at['curve_reward']:.4f} ({at['updates']}) |")
    return ("\nCost (seconds per update, mean over the chosen rate's seeds: sampling and decoding; the rewards' "
            "scoring; the terms' forwards; the rest of the update) and the curve seeds' reward at the end and after "
            f"Diffusion-DPO's whole training time ({rows['diffusion_dpo']['at_dpo_time']['seconds']:.0f} s; the curve "
            "is sampled every few updates, so the last point within that time):\n\n" + "\n".join(lines) + "\n")


def equal_time_table(results: dict) -> str:
    """Each objective trained for as many updates as fit in Diffusion-DPO's training time, on the
    held-out evaluation seeds: the gain per seed with its interval, the mean, win-rate and prompt
    following; Diffusion-DPO's row is its own runs. Empty without those runs."""
    rows = {n: r["equal_time"] for n, r in results["objectives"].items() if "equal_time" in r}
    dpo = results["objectives"].get("diffusion_dpo")
    if not rows or dpo is None:
        return ""
    rows = {"diffusion_dpo": {**dpo, "runs": [{**run, "updates": dpo["curve"][-1][0]} for run in dpo["runs"]]},
            **rows}
    lines = ["| objective | updates | gain [95% CI], each training seed | mean gain | win-rate vs base "
             "| prompt following |", "|" + "---|" * 6]
    for name, r in rows.items():
        updates = sorted({run["updates"] for run in r["runs"]})
        gains = "; ".join(f"{g['value']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]" for g in (run["gain"] for run in r["runs"]))
        lines.append(f"| {name} | {'–'.join(map(str, (updates[0], updates[-1]) if len(updates) > 1 else updates))}"
                     f" | {gains} | {r['mean_gain']:+.4f} | {r['mean_win_rate']:.2f} | {r['min_prompt_following']:.2f} |")
    budget = next(iter(r for n, r in rows.items() if n != "diffusion_dpo"))["budget_seconds"]
    return ("\nAt Diffusion-DPO's wall-clock budget (its training time, "
            f"{budget:.0f} s): each objective trained again per seed for as many updates as its own seconds per "
            "update fit in that time (the same warm-up share), evaluated on the held-out seeds:\n\n"
            + "\n".join(lines) + "\n")


def _seconds(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _times(ratio) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results["objectives"].items():
        steps, rewards = zip(*[(point[0], point[1]) for point in r["curve"]])
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
    (out / "report.md").write_text(intro + markdown_table(results) + sweep_table(results) + cost_table(results)
                                   + equal_time_table(results)
                                   + step_aware_line(results) + divergence_lines(results))


def divergence_lines(results: dict) -> str:
    """What the reward-hacking watch said of each run whose step reports its own score (SPO)."""
    said = [f"- {name}, seed {run['seed']}: {run['divergence']}" for name, r in results["objectives"].items()
            for run in r.get("runs", []) if run.get("divergence")]
    return "\nReward-hacking watch (the step's own score against the true reward of the curve seeds):\n\n" \
        + "\n".join(said) + "\n" if said else ""


def step_aware_line(results: dict) -> str:
    """SPO's step-aware model's held-out pair accuracy (chance is 0.5), when the run trained one."""
    if "step_aware" not in results:
        return ""
    held = results["step_aware"]["heldout_accuracy"]["heldout"]
    per_t = ", ".join(f"t = {t}: {a:.2f}" for t, a in held["accuracy"].items())
    return (f"\nSPO's step-aware preference model, trained on the toy's pairs: held-out pair accuracy "
            f"{held['mean']:.2f} over {held['pairs']} pairs (chance 0.50; {per_t}).\n")
