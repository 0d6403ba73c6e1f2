"""Per-image captions for DCPO (Saeidi et al., 2025, "Dual Caption Preference Optimization for
Diffusion Models").

DCPO trains on pairs whose images carry their own captions, so the preferred and the rejected
image are no longer described by one shared prompt. The paper makes them three ways:

- ``captioning`` (DCPO-c): an image-to-text model describes each image; conditioned on the prompt
  through ``caption_template`` (e.g. BLIP's text prefix, or an instruction for a chat VLM), and
  unconditioned without one;
- ``perturbation`` (DCPO-p): the best image keeps the prompt; a text model rewrites the prompt for
  every other image with a controlled level of change (``weak``, ``medium``, ``strong``: an
  instruction per level, see :data:`PERTURB_INSTRUCTIONS`);
- ``hybrid`` (DCPO-h): the best image keeps the prompt; every other image's caption (as in
  captioning) is then perturbed.

Models are transformers checkpoints given by hub id or folder: an image-to-text model
(``AutoModelForImageTextToText`` / BLIP-style, with its ``AutoProcessor``) and a text model
(seq2seq such as T5/Flan-T5, or a causal LM). Generation is greedy unless a level asks for
sampling, seeded per row, so a resumed build writes the same captions. ``meta`` keeps the
strategy, the level and each caption's word-level change from the prompt (``1 − Jaccard``).
The builder copies every other column; an empty generated caption falls back to the prompt and
is counted in the manifest.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from diffalign.arguments import COUNT, SEED
from diffalign.data.writer import BuildError, ShardWriter, add_writer_arguments

BUILDER = "dual-captions"
STRATEGIES = ("captioning", "perturbation", "hybrid")
LEVELS = ("weak", "medium", "strong")
PERTURB_INSTRUCTIONS = {
    "weak": "Paraphrase this image description, keeping its meaning: {text}",
    "medium": "Rewrite this image description, changing one detail such as a colour, object or count: {text}",
    "strong": "Rewrite this image description so that it describes a clearly different image: {text}",
}
"""The instruction the text model gets per level of change (``{text}`` is the prompt or caption)."""
SAMPLING = {"weak": None, "medium": 0.7, "strong": 1.0}
"""Sampling temperature per level (``None``: greedy)."""


def word_change(reference: str, text: str) -> float:
    """``1 − |A ∩ B| / |A ∪ B|`` over the lower-cased word sets: 0 = same words, 1 = none shared."""
    a, b = set(re.findall(r"\w+", reference.lower())), set(re.findall(r"\w+", text.lower()))
    if not a and not b:
        return 0.0
    return 1.0 - len(a & b) / len(a | b)


class Captioner:
    """An image-to-text model: ``caption(images, prompts) -> [K] strings``.

    Args:
        path: hub id or folder of a transformers image-to-text model with its processor.
        template: text the generation is conditioned on, ``{prompt}`` filled in (``None``: none);
            the rendered template is removed from the front of the output when it is echoed.
        max_new_tokens: caption length limit.
    """

    def __init__(self, path: str, template: str | None = None, max_new_tokens: int = 40, device="cpu", dtype=None):
        import transformers

        self.processor = transformers.AutoProcessor.from_pretrained(path)
        model = None
        for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
            cls = getattr(transformers, name, None)
            if cls is None:
                continue
            try:
                model = cls.from_pretrained(path, dtype=dtype)
                break
            except ValueError:  # the config is not registered with this auto class
                continue
        if model is None:
            raise BuildError(f"{path}: not an image-to-text model transformers can load")
        self.model = model.to(device).eval()
        self.template, self.max_new_tokens, self.device = template, max_new_tokens, device

    def caption(self, images: Sequence, prompts: Sequence[str]) -> list[str]:
        """``[K]`` captions of ``images`` (PIL), each conditioned on its prompt by the template."""
        import torch

        texts = [self.template.format(prompt=p) for p in prompts] if self.template else None
        inputs = self.processor(images=list(images), text=texts, return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        # A decoder-only VLM returns its input before the caption; BLIP returns its text prefix,
        # which _strip_echo removes from the decoded text instead.
        echoes_input = not self.model.config.is_encoder_decoder and getattr(self.model.config, "model_type", "") != "blip"
        if echoes_input and "input_ids" in inputs and ids.shape[1] > inputs["input_ids"].shape[1]:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        out = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [_strip_echo(text, rendered) for text, rendered in zip(out, texts or [None] * len(out))]


def _strip_echo(text: str, rendered: str | None) -> str:
    text = " ".join(text.split())
    if rendered:
        echo = " ".join(rendered.split()).lower()
        if text.lower().startswith(echo):
            text = text[len(echo):]
    return text.strip(" :,.")


class Perturber:
    """A text model rewriting prompts: ``perturb(texts, level, seed) -> [B] strings``.

    Args:
        path: hub id or folder of a seq2seq (T5-style) or causal language model with its tokenizer.
        max_new_tokens: rewrite length limit.
    """

    def __init__(self, path: str, max_new_tokens: int = 60, device="cpu", dtype=None):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        self.seq2seq = bool(config.is_encoder_decoder)
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(path, dtype=dtype).to(device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left" if not self.seq2seq else self.tokenizer.padding_side
        self.max_new_tokens, self.device = max_new_tokens, device

    def perturb(self, texts: Sequence[str], level: str, seed: int) -> list[str]:
        """``[B]`` rewrites of ``texts`` at ``level`` (sampling seeded by ``seed``)."""
        import torch

        instructions = [PERTURB_INSTRUCTIONS[level].format(text=t) for t in texts]
        inputs = self.tokenizer(instructions, return_tensors="pt", padding=True, truncation=True).to(self.device)
        temperature = SAMPLING[level]
        options = {"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature, "top_p": 0.95}
        torch.manual_seed(seed)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, **options)
        if not self.seq2seq:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        return [" ".join(t.split()) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def caption_row(row: dict, images: list, strategy: str, *, captioner: Captioner | None, perturber: Perturber | None,
                level: str, seed: int) -> tuple[list[str], dict]:
    """``([K] captions, meta additions)`` of one group row (images best first, PIL)."""
    prompt, k = row["prompt"], len(images)
    if strategy == "captioning":
        captions = captioner.caption(images, [prompt] * k)
    elif strategy == "perturbation":
        captions = [prompt] + perturber.perturb([prompt] * (k - 1), level, seed)
    elif strategy == "hybrid":
        described = captioner.caption(images[1:], [prompt] * (k - 1))
        captions = [prompt] + perturber.perturb(described, level, seed)
    else:
        raise BuildError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    captions = [c if c.strip() else prompt for c in captions]
    meta = {"dcpo": {"strategy": strategy, "level": level if strategy != "captioning" else None,
                     "change": [round(word_change(prompt, c), 4) for c in captions], "fallback_to_prompt": empty}}
    return captions, meta


def build_dual_captions(
    data_dir: str | Path,
    out: str | Path,
    *,
    strategy: str = "captioning",
    captioner: str | None = None,
    caption_template: str | None = None,
    text_model: str | None = None,
    level: str = "medium",
    seed: int = 0,
    max_new_tokens: int = 40,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a copy of a preference dataset with a caption per image (resumable).

    Args:
        data_dir: the source preference dataset (pairs or ranked groups).
        out: the captioned dataset folder.
        strategy: one of :data:`STRATEGIES`.
        captioner: image-to-text model (hub id or folder); needed by captioning and hybrid.
        caption_template: conditioning text with ``{prompt}`` (``None``: unconditioned).
        text_model: text model for perturbation and hybrid.
        level: one of :data:`LEVELS`.
        seed: row ``i`` samples with ``seed + i``.

    Returns:
        The manifest.
    """
    import torch

    from diffalign.data.dataset import PreferenceDataset
    from diffalign.data.images import IMAGE_ERRORS, decode
    from diffalign.data.schema import UnsafeImagePathError

    if strategy not in STRATEGIES:
        raise BuildError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if level not in LEVELS:
        raise BuildError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if strategy in ("captioning", "hybrid") and not captioner:
        raise BuildError(f"the {strategy} strategy needs an image-to-text model: pass --captioner")
    if strategy in ("perturbation", "hybrid") and not text_model:
        raise BuildError(f"the {strategy} strategy needs a text model: pass --text-model")
    data = PreferenceDataset.open(data_dir)
    if data.group_size < 2 and strategy != "captioning":
        raise BuildError(f"{data_dir} has one image per prompt (K = 1): the {strategy} strategy rewrites the "
                         "captions of the images after the best, and there are none; use --strategy captioning")
    options = dict(data=str(Path(data_dir).resolve()), strategy=strategy, captioner=captioner,
                   caption_template=caption_template, text_model=text_model, level=level, seed=seed,
                   max_new_tokens=max_new_tokens, shard_size=shard_size)
    writer = ShardWriter(out, builder=BUILDER, options=options, shard_size=shard_size, overwrite=overwrite,
                         inputs={"data": data_dir, "--captioner": captioner, "--text-model": text_model})
    if writer.complete:
        return writer.finish()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    vlm = Captioner(captioner, caption_template, max_new_tokens, device, dtype) if strategy != "perturbation" else None
    lm = Perturber(text_model, max_new_tokens, device, dtype) if strategy != "captioning" else None
    with tqdm(total=len(data), initial=writer.position, unit=" rows", desc="dual captions", disable=not progress) as bar:
        for position in range(writer.position, len(data)):
            row = data[position]
            try:
                stored = [data.image_bytes(img) for img in row["images"]]
                images = [decode(b) for b in stored]
            except (UnsafeImagePathError, *IMAGE_ERRORS):
                writer.drop("unreadable_image")  # counted in the manifest, as the other builders do
                writer.advance(position + 1)
                bar.update(1)
                continue
            captions, extra = caption_row(row, images, strategy, captioner=vlm, perturber=lm, level=level, seed=seed + position)
            if extra["dcpo"]["fallback_to_prompt"]:
                writer.counts["empty_caption_fallbacks"] = writer.counts.get("empty_caption_fallbacks", 0) + len(
                    extra["dcpo"]["fallback_to_prompt"])
            meta = json.loads(row["meta"]) if row.get("meta") else {}
            images_out = [{"bytes": b, "path": None} for b in stored]
            writer.add({**row, "images": images_out, "captions": captions, "meta": json.dumps({**meta, **extra})})
            writer.advance(position + 1)
            bar.update(1)
    return writer.finish({"group_size": data.group_size, "reward_models": data.manifest.get("reward_models", []),
                          "caption_models": {"captioner": captioner, "text_model": text_model}})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``diffalign build dual-captions`` and ``datasets_builders/dual_captions.py``."""
    parser.add_argument("data", help="preference dataset folder (pairs or ranked groups)")
    parser.add_argument("--out", required=True, help="folder of the captioned dataset (resumes an interrupted build)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="captioning",
                        help="captioning: describe each image; perturbation: rewrite the prompt for the worse images; "
                        "hybrid: perturb the worse images' captions (default: captioning)")
    parser.add_argument("--captioner", default=None, help="image-to-text model, hub id or folder (e.g. Salesforce/blip-image-captioning-large)")
    parser.add_argument("--caption-template", default=None,
                        help="conditioning text with {prompt}, e.g. 'a picture of' for BLIP or a VLM instruction (default: none)")
    parser.add_argument("--text-model", default=None, help="text model for perturbation, hub id or folder (e.g. google/flan-t5-large)")
    parser.add_argument("--level", choices=LEVELS, default="medium", help="how much perturbation changes the text (default: medium)")
    parser.add_argument("--seed", type=SEED, default=0, help="sampling seed; row i uses seed + i (default: 0)")
    parser.add_argument("--max-new-tokens", type=COUNT, default=40, help="caption length limit in tokens (default: 40)")
    add_writer_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the builder from parsed arguments."""
    manifest = build_dual_captions(
        args.data, args.out, strategy=args.strategy, captioner=args.captioner, caption_template=args.caption_template,
        text_model=args.text_model, level=args.level, seed=args.seed, max_new_tokens=args.max_new_tokens,
        shard_size=args.shard_size, overwrite=args.overwrite, progress=not args.no_progress,
    )
    print(f"wrote {manifest['rows']} captioned groups to {args.out}; counts: {json.dumps(manifest['counts'])}")
    return 0
