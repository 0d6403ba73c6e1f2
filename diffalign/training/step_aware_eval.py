"""What training a step-aware preference model (SPM) and judging it on held-out pairs share, and
the held-out record that early stopping reads (the run itself: :mod:`diffalign.training.step_aware`).

- :func:`pair_labels`, :func:`pair_losses` / :func:`spm_pair_loss`: the targets and the authors'
  pair loss, the same on a training batch and on held-out pairs;
- :func:`estimate_pixels`: the decoded one-step estimates ``x̂0`` of a batch of pairs;
- :func:`heldout_accuracy`: pair accuracy **and pair loss** at fixed times, with fixed noise;
- :class:`HeldoutRecord`: every evaluation of a run, the best one (by held-out loss), the
  evaluations since it, whether to stop, and (optionally) a CPU copy of the best weights. It is
  what :class:`~diffalign.training.update.UpdateLoop` carries through checkpoints, so a resumed
  run knows the best-so-far state of the run it continues.

Early stopping reads the **held-out pair loss**, not the accuracy. The accuracy changes only
when a pair flips: on the held-out sets an evaluation every few hundred steps can afford (the
toy's, a few thousand Pick-a-Pic pairs) it moves in steps of ``1 / (pairs · times)``, a tie
counts ½ whatever the scores, so it stays flat for evaluations and then jumps, and a patience
counter on it stops on ties and noise (the tiny test run's accuracy is equal at its second and
third evaluations while its loss still falls). The loss is continuous and sees what the
accuracy cannot: margins that shrink, and wrong pairs growing confident, before any pair flips.
That over-confidence is what SPO exploits (it climbs the SPM's score), so it is what to stop before.
"""

from __future__ import annotations

import json
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffalign.rewards.step_aware import StepAwarePreferenceModel, pixels_from_noisy


# ----------------------------------------------------------------------------------- the loss
def pair_labels(batch: dict) -> Tensor:
    """``[B, 2]`` targets of best-first pairs: ``(1, 0)``, or ``(½, ½)`` where the ranks tie."""
    count = len(batch["ids"])
    labels = torch.tensor([[1.0, 0.0]]).repeat(count, 1)
    ranks = batch.get("ranks")
    if ranks is not None:
        labels[ranks[:, 0] == ranks[:, 1]] = 0.5
    return labels


def pair_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """``[B]`` per-pair losses ``−Σ_i y_i·log softmax(z)_i + [tie]·log ½`` (nats; 0 for a pair
    fitted perfectly, a tie included) of ``logits [B, 2]`` and ``labels [B, 2]``."""
    loss = -(labels * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return loss + (labels[:, 0] == labels[:, 1]).float() * math.log(0.5)


def spm_pair_loss(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """The authors' SPM loss over ``B`` pairs (:mod:`~diffalign.training.step_aware`, step 4).

    Args:
        logits: ``[B, 2]`` preference logits; labels: ``[B, 2]`` targets summing to 1.
        weights: ``[B]`` example weights (normalised here to sum 1); ``None``: the mean.

    Returns:
        A scalar; 0 for a perfectly fitted batch (ties included: ``log ½`` is added back).
    """
    loss = pair_losses(logits, labels)
    weights = torch.ones_like(loss) if weights is None else weights.to(loss)
    return (loss * weights / weights.sum()).sum()


def seeded_generator(*numbers: int) -> torch.Generator:
    """A CPU generator seeded from ``numbers`` (mixed by numpy's SeedSequence)."""
    seed = int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- x̂0 of a pair
def estimate_pixels(family, batch: dict, guidance: float, generator: torch.Generator,
                    t: float | None = None) -> tuple[Tensor, Tensor]:
    """The decoded one-step estimates of a batch of pairs, noised with one ``ε`` and ``t`` per pair.

    Args:
        batch: from :func:`~diffalign.data.loader.collate_groups` (``pixels [B, 2, 3, R, R]``).
        t: a fixed normalised time for every pair (evaluation); ``None`` draws one per pair.

    Returns:
        ``(pixels [B, 2, 3, R, R] in [0, 1], t [B])``.
    """
    count, size = len(batch["ids"]), tuple(batch["pixels"].shape[-2:])
    texts = [[prompt] * 2 for prompt in batch["prompts"]]
    latents, cond = family.inputs(batch, texts, generator)
    noise, times = family.sample_noise_and_time(latents, generator)
    if t is not None:
        times = torch.full_like(times, t)
    uncond = family.encode_prompts([""] * count, group_size=2, image_info=family.image_info(batch, size))
    noisy = family.add_noise(latents, noise, times)
    return pixels_from_noisy(family, family.denoiser, noisy, times, cond, uncond, guidance), times


def pair_logits(spm, pixels: Tensor, prompts: list[str], times: Tensor) -> Tensor:
    """``[B, 2]`` SPM logits of ``pixels [B, 2, 3, H, W]``, each pair at its time. Called through
    ``forward`` (the SPM's ``score_noisy``), so an accelerate/DDP-wrapped SPM syncs its gradients."""
    return spm(pixels.flatten(0, 1), [p for p in prompts for _ in range(2)], times.repeat_interleave(2)).view(-1, 2)


# ----------------------------------------------------------------------------------- held-out pairs
@torch.no_grad()
def heldout_accuracy(spm: StepAwarePreferenceModel, family, groups, indices: list[int], times: tuple[float, ...],
                     guidance: float = 5.0, batch_size: int = 16, seed: int = 0) -> dict:
    """Pair accuracy and pair loss of ``spm`` on rows ``indices`` of ``groups`` at each normalised time.

    Accuracy is ``y_0·[z_0 > z_1] + y_1·[z_1 > z_0]`` per pair (a tie counts ½ unless the scores
    are equal); the loss is :func:`pair_losses` (nats), an unweighted mean over the pairs. The
    noise depends only on ``seed`` and the batch, so two evaluations differ only by the model.

    Returns:
        ``{"pairs": N, "accuracy": {"<t>": acc}, "loss": {"<t>": nats}, "ddpm_index": {"<t>": round(t·999)},
        "mean": mean accuracy over t, "mean_loss": mean loss over t}`` with ``<t>`` written to 4
        decimals; accuracies and losses are ``None`` when there are no pairs.
    """
    from diffalign.data.loader import collate_groups

    was_training = spm.training
    spm.eval()
    accuracy, loss = {}, {}
    for t in times:
        correct, losses = [], []
        for start in range(0, len(indices), batch_size):
            batch = collate_groups([groups[i] for i in indices[start : start + batch_size]])
            if not batch["ids"]:
                continue
            labels = pair_labels(batch)
            if t == 0:  # the clean images themselves, as the authors evaluate t = 0
                pixels = (batch["pixels"].float() / 2 + 0.5).clamp(0, 1)
                times_ = torch.zeros(len(batch["ids"]))
            else:  # the same noise at every t and every evaluation: only the model changes
                pixels, times_ = estimate_pixels(family, batch, guidance, seeded_generator(seed, 1, start), t)
            logits = pair_logits(spm, pixels.to(spm.device), batch["prompts"], times_).cpu()
            correct += (labels[:, 0] * (logits[:, 0] > logits[:, 1]) + labels[:, 1] * (logits[:, 1] > logits[:, 0])).tolist()
            losses += pair_losses(logits, labels).tolist()
        accuracy[f"{t:.4f}"] = sum(correct) / len(correct) if correct else None
        loss[f"{t:.4f}"] = sum(losses) / len(losses) if losses else None
    spm.train(was_training)

    def mean(values: dict) -> float | None:
        present = [v for v in values.values() if v is not None]
        return sum(present) / len(present) if present else None

    return {"pairs": len(indices), "accuracy": accuracy, "loss": loss,
            "ddpm_index": {f"{t:.4f}": round(t * 999) for t in times}, "mean": mean(accuracy), "mean_loss": mean(loss)}


class HeldoutRecord:
    """Every held-out evaluation of a run, the best so far, and whether to stop (module docstring).

    Args:
        patience: stop once this many evaluations in a row have not improved on the best
            held-out loss (``None``: never stop early).
        min_delta: an evaluation improves when its mean held-out loss is below the best one's by
            more than this (nats).
        keep_best: keep a CPU copy of the trainable weights at the best evaluation (and carry it
            in checkpoints), for the run to save as its final model.

    ``history`` lists ``{"step", "heldout_loss", "mean_accuracy"}`` per evaluation; ``best`` and
    ``last`` are whole :func:`heldout_accuracy` results with their ``"step"``.
    """

    shared_state = True  # only the main process evaluates; it writes the record once per checkpoint

    def __init__(self, patience: int | None = None, min_delta: float = 0.0, keep_best: bool = False):
        self.patience, self.min_delta, self.keep_best = patience, min_delta, keep_best
        self.history: list[dict] = []
        self.best: dict | None = None
        self.last: dict | None = None
        self.since_best = 0
        self.stopped = False
        self.weights: dict[str, Tensor] = {}

    def record(self, result: dict, weights: Callable[[], dict[str, Tensor]] | None = None, can_stop: bool = True) -> bool:
        """Add an evaluation (a :func:`heldout_accuracy` result with its ``"step"``); ``weights``
        gives the model's trainable tensors, copied when this is the new best and ``keep_best``;
        ``can_stop=False`` (the run's last step) records without calling it an early stop.
        Returns whether it improved. A non-finite loss never improves (a diverged model is never the best)."""
        loss = result["mean_loss"]
        self.history.append({"step": result["step"], "heldout_loss": loss, "mean_accuracy": result["mean"]})
        self.last = result
        finite = loss is not None and math.isfinite(loss)
        improved = finite and (self.best is None or loss < self.best["mean_loss"] - self.min_delta)
        if improved:
            self.best, self.since_best = result, 0
            if self.keep_best and weights is not None:
                self.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights().items()}
        else:
            self.since_best += 1
        self.stopped = self.stopped or (can_stop and self.patience is not None and self.since_best >= self.patience)
        return improved

    @property
    def final(self) -> dict | None:
        """The evaluation of the model a finished run saves: the best one under ``keep_best``, else the last."""
        return self.best if self.keep_best and self.best is not None else self.last

    def summary(self) -> dict:
        """``{"best_step", "best": {...}, "stopped_early", "since_best", "history": [...]}`` (JSON)."""
        best = self.best and {key: self.best[key] for key in ("step", "accuracy", "mean", "loss", "mean_loss")}
        return {"best_step": self.best and self.best["step"], "best": best, "stopped_early": self.stopped,
                "since_best": self.since_best, "history": list(self.history)}

    # ----------------------------------------------------------------- checkpointed (UpdateLoop's carried)
    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for a checkpoint: the record as UTF-8 JSON bytes (``uint8 [n]``) and the best
        weights under ``best.<name>``."""
        meta = json.dumps({"history": self.history, "best": self.best, "last": self.last,
                           "since_best": self.since_best, "stopped": self.stopped}).encode()
        return {"record": torch.frombuffer(bytearray(meta), dtype=torch.uint8).clone(),
                **{f"best.{name}": tensor for name, tensor in self.weights.items()}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`; an empty state (a checkpoint written before runs kept a
        record) leaves the record empty."""
        if not state:
            return
        meta = json.loads(bytes(state["record"].tolist()).decode())
        self.history, self.best, self.last = meta["history"], meta["best"], meta["last"]
        self.since_best, self.stopped = meta["since_best"], meta["stopped"]
        self.weights = {name[len("best."):]: tensor for name, tensor in state.items() if name.startswith("best.")}


__all__ = ["HeldoutRecord", "estimate_pixels", "heldout_accuracy", "pair_labels", "pair_logits", "pair_losses",
           "seeded_generator", "spm_pair_loss"]
