"""One collection's training plan: which (image, trained step) pairs each micro-batch takes, in
which order, and where the updates begin (:class:`~diffalign.steps.online.OnlineStep` runs it).

As the official Flow-GRPO loop does (``scripts/train_sd3.py`` L797–860): images whose advantage
is 0 (a prompt whose ``K`` rewards are all equal) are left out; the kept images are shuffled
(one seeded order per inner epoch) and cut into micro-batches of images; every micro-batch is
trained at each trained step in turn (one forward and backward per (micro-batch, step)), and the
collection's micro-batches are split into ``updates`` consecutive optimiser updates.

**Every process runs the same backwards.** Processes keep different numbers of images (their
prompts differ), but a distributed backward hangs unless each process runs the same number. So
the number of image micro-batches is fixed by the collection's size, ``⌈N / micro_batch⌉``, on
every process, and the kept images are dealt over them as evenly as they go (micro-batches of
sizes that differ by at most one); a micro-batch left empty trains one image with weight 0
(the official code instead puts back zero-advantage images until the count divides evenly).

Shapes: ``N`` images of the collection (``B`` prompts × ``K``), ``T`` trained steps per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MicroPlan:
    """One micro-batch: ``images [n]`` (indices into the collection), each at its trained step
    ``position`` (``steps[images, position]``), with weight ``weight`` (0: padding)."""

    images: Tensor
    position: int
    weight: float = 1.0


def trained_steps(images: int, steps: int, count: int, how: str, generator: torch.Generator,
                  first: int = 0) -> Tensor:
    """``[N, T]`` the sampler steps each image trains, rising.

    ``how``: ``first`` trains steps ``first … first + T − 1`` of every image (Flow-GRPO: the first
    ``⌊0.99·S⌋``; an SDE window: its steps); ``random`` a random ``T`` of the ``steps`` steps from
    ``first`` on, for each image (DanceGRPO: of all but the last).
    """
    if how == "first":
        return torch.arange(first, first + count)[None].expand(images, -1).clone()
    if how != "random":
        raise ValueError(f"trained steps are 'first' or 'random', got {how!r}")
    order = torch.stack([torch.randperm(steps, generator=generator)[:count] for _ in range(images)])
    return order.sort(dim=1).values + first


def plan_updates(kept: Tensor, positions: int, micro_batch: int, updates: int, inner_epochs: int,
                 generator: torch.Generator) -> list[list[MicroPlan]]:
    """The collection's updates, each a list of :class:`MicroPlan`.

    Args:
        kept: ``[N]`` bool, the images that train (non-zero advantage).
        positions: ``T``, trained steps per image.
        micro_batch: images per micro-batch; the count of image micro-batches is ``⌈N / micro_batch⌉``.
        updates: optimiser updates per collection (at most the micro-batches of all inner epochs).
        inner_epochs: passes over the collection, each in its own order from ``generator``.
    """
    n = kept.numel()
    chunks = -(-n // micro_batch)
    total = inner_epochs * chunks * positions
    if not 1 <= updates <= total:
        raise ValueError(f"{updates} updates per collection, but a collection has {total} micro-batches "
                         f"({inner_epochs} inner epochs × {chunks} image micro-batches × {positions} steps)")
    index = kept.nonzero().flatten()
    micro: list[MicroPlan] = []
    for _ in range(inner_epochs):
        order = index[torch.randperm(len(index), generator=generator)]
        for part in torch.tensor_split(order, chunks):
            padded = len(part) == 0
            images = torch.zeros(1, dtype=torch.long) if padded else part
            micro += [MicroPlan(images, p, 0.0 if padded else 1.0) for p in range(positions)]
    bounds = torch.tensor_split(torch.arange(total), updates)
    return [[micro[i] for i in part.tolist()] for part in bounds]


def keep_best_worst(rewards: Tensor, n: int) -> Tensor:
    """``[P, K]`` bool: each group's ``n`` highest- and ``n`` lowest-rewarded images (DanceGRPO's
    best/worst-of-K for video); ties go to the earlier image."""
    order = rewards.argsort(dim=1, descending=True, stable=True)
    keep = torch.zeros_like(rewards, dtype=torch.bool)
    keep.scatter_(1, torch.cat([order[:, :n], order[:, -n:]], dim=1), True)
    return keep


__all__ = ["MicroPlan", "keep_best_worst", "plan_updates", "trained_steps"]
