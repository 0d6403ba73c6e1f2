"""The toy world: one coloured shape on a grey background, described by "a <colour> <shape>".

Images are ``[3, 32, 32]`` in [0, 1]. Scenes vary in size and position, so a model trained on
them produces objects of many sizes for the same prompt, which the toy reward then ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIZE = 32
BACKGROUND = (0.5, 0.5, 0.5)
COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.95, 0.85, 0.1),
}
SHAPES = ("circle", "square")
PROMPTS = tuple(f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES)
"""The eight prompts of the grammar."""
RADIUS_RANGE = (3.0, 11.0)
"""Half-width of the object, in pixels, drawn uniformly when the world is sampled."""


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    radius: float
    center: tuple[float, float]

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape}"


def parse(prompt: str) -> tuple[str, str]:
    """``"a red circle"`` → ``("red", "circle")``."""
    words = prompt.split()
    if len(words) != 3 or words[1] not in COLOURS or words[2] not in SHAPES:
        raise ValueError(f"{prompt!r} is not a toy prompt; expected one of {PROMPTS}")
    return words[1], words[2]


def sample_scene(generator: torch.Generator, prompt: str | None = None) -> Scene:
    """A random scene (of ``prompt`` if given): radius and centre uniform, the object inside."""
    u = torch.rand(4, generator=generator).tolist()
    if prompt is None:
        prompt = PROMPTS[int(u[0] * len(PROMPTS)) % len(PROMPTS)]
    colour, shape = parse(prompt)
    radius = RADIUS_RANGE[0] + u[1] * (RADIUS_RANGE[1] - RADIUS_RANGE[0])
    low, high = radius, SIZE - radius
    return Scene(colour, shape, radius, (low + u[2] * (high - low), low + u[3] * (high - low)))


def render(scene: Scene) -> torch.Tensor:
    """``[3, SIZE, SIZE]`` image in [0, 1] with slightly soft edges."""
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dy, dx = y - scene.center[0], x - scene.center[1]
    if scene.shape == "circle":
        distance = (dx**2 + dy**2).sqrt() - scene.radius
    else:
        distance = torch.maximum(dx.abs(), dy.abs()) - scene.radius
    mask = (0.5 - distance).clamp(0, 1)  # one-pixel antialiased edge
    colour = torch.tensor(COLOURS[scene.colour]).view(3, 1, 1)
    background = torch.tensor(BACKGROUND).view(3, 1, 1)
    return background * (1 - mask) + colour * mask


def sample_images(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` random scenes: images ``[n, 3, SIZE, SIZE]`` and their prompts."""
    generator = torch.Generator().manual_seed(seed)
    scenes = [sample_scene(generator) for _ in range(n)]
    return torch.stack([render(s) for s in scenes]), [s.prompt for s in scenes]
