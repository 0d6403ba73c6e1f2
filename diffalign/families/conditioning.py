"""Text conditioning of a ``[B, K]`` group of images, and the family operations that make it.

Shapes: ``B`` groups, ``K`` images per group, ``L, D`` text tokens and width, ``P`` pooled width.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Text conditioning for a ``[B, K]`` group of images (DCPO gives each image its own caption).

    Attributes:
        prompt_embeds: ``[B, K, L, D]`` token embeddings fed to cross/joint attention.
        pooled: ``[B, K, P]`` pooled text embedding (SDXL, SD3), else ``None``.
        time_ids: ``[B, K, 6]`` SDXL micro-conditioning (original h, w, crop top, left,
            target h, w), else ``None``.
    """

    prompt_embeds: Tensor
    pooled: Tensor | None = None
    time_ids: Tensor | None = None

    @property
    def group_shape(self) -> tuple[int, int]:
        """``(B, K)``."""
        return tuple(self.prompt_embeds.shape[:2])

    def flat(self) -> Conditioning:
        """The same tensors with ``B`` and ``K`` merged into one batch axis of ``B*K``."""
        return self._map(lambda x: x.flatten(0, 1))

    def select(self, index: slice) -> Conditioning:
        """The conditioning of images ``index`` of every group: ``[B, K', ...]``."""
        return self._map(lambda x: x[:, index])

    def groups(self, index: Tensor) -> Conditioning:
        """The conditioning of groups ``index`` (``[B']`` indices): ``[B', K, ...]``."""
        return self._map(lambda x: x[index.to(x.device)])

    def repeat_images(self, times: int) -> Conditioning:
        """Each image's conditioning ``times`` times in a row: ``[B, K·times, ...]``."""
        return self._map(lambda x: x.repeat_interleave(times, dim=1))

    def join(self, other: Conditioning) -> Conditioning:
        """``self``'s images then ``other``'s in each group: ``[B, K + K', ...]`` (one forward for
        classifier-free guidance's two predictions)."""
        return replace(self, **{f.name: torch.cat([mine, getattr(other, f.name)], dim=1)
                                for f in fields(self) if (mine := getattr(self, f.name)) is not None})

    def to(self, *args, **kwargs) -> Conditioning:
        """``Tensor.to`` on every tensor (device and/or dtype)."""
        return self._map(lambda x: x.to(*args, **kwargs))

    def _map(self, fn) -> Conditioning:
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})


def group_prompts(prompts: Sequence[str] | Sequence[Sequence[str]], group_size: int | None) -> list[list[str]]:
    """Normalise prompts to a ``[B][K]`` nested list.

    Args:
        prompts: either ``B`` strings (one prompt shared by the group) or ``B`` lists of ``K``
            strings (one caption per image, as DCPO uses).
        group_size: ``K`` to repeat a shared prompt to; ``None`` means 1 for flat prompts.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings or a list of lists of strings, not one string")
    if all(isinstance(p, str) for p in prompts):
        return [[p] * (group_size or 1) for p in prompts]
    nested = [list(p) for p in prompts]
    sizes = {len(p) for p in nested}
    if len(sizes) != 1 or (group_size is not None and sizes != {group_size}):
        raise ValueError(f"every group needs the same number of captions; got sizes {sorted(sizes)}")
    return nested


def stored_texts(batch: dict, texts: list[list[str]], device) -> tuple[Tensor, Tensor | None]:
    """The embeddings a cached batch stores for the ``texts`` a step conditions each image on.

    A cached batch (:meth:`~diffalign.data.cache.LatentCache.get`, collated) holds each row's
    prompt's embedding, ``prompt_embeds [B, L, D]`` (+ ``prompt_pooled [B, P]``), and in a
    captioned dataset's cache each image's caption's, ``caption_embeds [B, K, L, D]`` (+
    ``caption_pooled [B, K, P]``). A row whose texts are all its prompt takes the prompt's (the
    objectives conditioned on the prompt), one whose texts are its captions takes the captions'
    (DCPO): the embeddings of the very texts the uncached path encodes.

    Args:
        texts: ``B`` lists of ``K`` strings (:func:`~diffalign.data.schema.image_texts`).

    Returns:
        ``(embeds [B, K, L, D], pooled [B, K, P] or None)`` on ``device``.

    Raises:
        ValueError: a row asks for a text the cache holds no embedding of.
    """
    captioned = [_conditioned_on_captions(batch, b, row) for b, row in enumerate(texts)]
    k = len(texts[0]) if texts else 0
    embeds = _per_image(batch["prompt_embeds"], batch.get("caption_embeds"), captioned, k, device)
    pooled = None
    if batch.get("prompt_pooled") is not None:
        pooled = _per_image(batch["prompt_pooled"], batch.get("caption_pooled"), captioned, k, device)
    return embeds, pooled


def _conditioned_on_captions(batch: dict, row: int, texts: list[str]) -> bool:
    """Whether row ``row`` of a cached batch asks for its captions' embeddings (``False``: its
    prompt's). A row whose captions all equal its prompt takes the prompt's: the cache encoded that
    text once, so both are the same tensor."""
    if all(text == batch["prompts"][row] for text in texts):
        return False
    captions = batch["captions"][row]
    if batch.get("caption_embeds") is not None and captions is not None and list(texts) == list(captions):
        return True
    raise ValueError(f"row {batch['ids'][row]!r} is to be conditioned on {texts!r}, and the latent cache holds "
                     "the embeddings of its prompt and captions only; train it uncached (data.cache=false)")


def _per_image(prompt: Tensor, captions: Tensor | None, captioned: list[bool], k: int, device) -> Tensor:
    """Each image's embedding ``[B, K, ...]`` from the rows' prompts' ``prompt [B, ...]`` and the
    images' captions' ``captions [B, K, ...]``: row ``b`` takes its captions' where ``captioned[b]``."""
    if captioned and all(captioned):
        return captions.to(device)
    # Moved before it is expanded: one transfer, not K. Materialised on the device: fed to the
    # denoiser as a stride-0 view, the step kept 21 MiB more at its peak (mini SDXL, 326.7 against
    # 305.8 MiB of live tensors, benchmarks/train_step.py --size mini --setups diffalign).
    shared = prompt.to(device).unsqueeze(1).expand(-1, k, *prompt.shape[1:])
    if not any(captioned):
        return shared.contiguous()
    mask = torch.tensor(captioned, device=device).view(-1, *[1] * (shared.ndim - 1))
    return torch.where(mask, captions.to(device), shared)


class PromptOperations:
    """``encode_prompts`` and ``make_conditioning``; a subclass implements ``_encode_text`` and,
    where images carry conditioning of their own (SDXL's sizes and crops), ``_with_image_info``."""

    @torch.no_grad()
    def encode_prompts(
        self,
        prompts: Sequence[str] | Sequence[Sequence[str]],
        group_size: int | None = None,
        image_info: dict[str, Tensor] | None = None,
    ) -> Conditioning:
        """Encode one prompt per image with the pipeline's own ``encode_prompt``.

        Identical strings are encoded once (a Diffusion-DPO pair shares its prompt, so this
        halves the text-encoder work).

        Args:
            prompts: ``B`` prompts shared by each group, or ``B`` lists of ``K`` captions.
            group_size: ``K`` when ``prompts`` are shared (default 1).
            image_info: SDXL only: ``original_size`` and ``crop_top_left``, each ``[B, K, 2]``.

        Returns:
            :class:`Conditioning` with tensors shaped ``[B, K, ...]``.
        """
        grid = group_prompts(prompts, group_size)
        b, k = len(grid), len(grid[0])
        flat = [p for row in grid for p in row]
        unique = list(dict.fromkeys(flat))
        embeds, pooled = self._encode_text(unique)
        index = torch.tensor([unique.index(p) for p in flat], device=embeds.device)
        return self.make_conditioning(
            embeds[index].unflatten(0, (b, k)),
            None if pooled is None else pooled[index].unflatten(0, (b, k)),
            image_info,
        )

    def make_conditioning(
        self, prompt_embeds: Tensor, pooled: Tensor | None = None, image_info: dict[str, Tensor] | None = None
    ) -> Conditioning:
        """Conditioning from text embeddings computed earlier (e.g. by the latent cache).

        Args:
            prompt_embeds: ``[B, K, L, D]``; pooled: ``[B, K, P]`` or ``None``.
            image_info: as for :meth:`encode_prompts` (SDXL's time ids are built here).
        """
        return self._with_image_info(Conditioning(prompt_embeds, pooled), image_info)

    def image_info(self, batch: dict, size: tuple[int, int]) -> dict | None:
        """What this family conditions each image on besides its text, from a training batch of
        images trained at ``size`` (``None``: nothing; SDXL: sizes and crops)."""
        return None

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """``N`` strings → (``[N, L, D]`` embeddings, ``[N, P]`` pooled or ``None``)."""
        raise NotImplementedError

    def _with_image_info(self, cond: Conditioning, image_info: dict[str, Tensor] | None) -> Conditioning:
        return cond
