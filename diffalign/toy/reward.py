"""The toy reward: how much of the image the prompted object covers.

``reward = mean over pixels of exp(−‖pixel − colour‖² / (2·0.15²))``, the soft fraction of the
image painted in the prompt's colour. A larger object of the right colour scores higher; an
object of the wrong colour scores ≈ 0. Rewarded: size (coverage). Not rewarded: shape, position.
A model could "hack" it by painting the whole image that colour, which is why the benchmark
also reports prompt following (:func:`follows_prompt`).
"""

from __future__ import annotations

import torch

from diffalign.toy.world import BACKGROUND, COLOURS, parse

_WIDTH = 0.15


def colour_coverage(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] → ``[N, C]`` soft coverage of each of the C toy colours."""
    palette = torch.tensor(list(COLOURS.values()), dtype=images.dtype, device=images.device)  # [C, 3]
    diff = images[:, None] - palette[None, :, :, None, None]  # [N, C, 3, H, W]
    return torch.exp(-(diff**2).sum(2) / (2 * _WIDTH**2)).mean((-2, -1))


def toy_reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``[N]`` coverage of the prompt's colour (differentiable in ``images``)."""
    index = torch.tensor([list(COLOURS).index(parse(p)[0]) for p in prompts], device=images.device)
    return colour_coverage(images).gather(1, index[:, None])[:, 0]


def follows_prompt(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``[N]`` bool: the prompt's colour is the dominant non-background toy colour and covers
    at least 2 % of the image (an object is there, and it has the asked-for colour)."""
    coverage = colour_coverage(images)
    index = torch.tensor([list(COLOURS).index(parse(p)[0]) for p in prompts], device=images.device)
    mine = coverage.gather(1, index[:, None])[:, 0]
    return (coverage.argmax(1) == index) & (mine > 0.02)


class ToyRewardScorer(torch.nn.Module):
    """The toy reward as SPO's step-aware scorer (an oracle): ``score_noisy(pixels, prompts, t)`` is
    100 × the toy reward of the decoded ``x̂0`` ``[N, 3, H, W]`` in [0, 1], whatever the time, on
    the scale of a step-aware model's logits. It tells SPO's method from its learned scorer."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the SPO step reads the scorer's device from a parameter

    def score_noisy(self, pixels: torch.Tensor, prompts, t: torch.Tensor) -> torch.Tensor:
        return 100 * toy_reward(pixels.float(), list(prompts))


class ToyReward(torch.nn.Module):
    """The toy reward as an online-RL reward plugin (``rewards: [{name: "diffalign.toy.reward:ToyReward"}]``):
    ``score(images [N, 3, H, W] in [0, 1], prompts) -> [N]`` is :func:`toy_reward`."""

    label = "toy_reward"

    def score(self, images: torch.Tensor, prompts) -> torch.Tensor:
        return toy_reward(images.float(), list(prompts))


__all__ = ["BACKGROUND", "ToyReward", "ToyRewardScorer", "colour_coverage", "follows_prompt", "toy_reward"]
