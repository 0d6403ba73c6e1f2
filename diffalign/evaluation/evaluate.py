"""``diffalign evaluate``: generate with a base and a candidate checkpoint on identical seeds, score
with reward models and GenEval, and write ``results.json`` and ``report.html``.

Output folder::

    <out>/base/, <out>/candidate/     GenEval layout (see :mod:`diffalign.evaluation.generate`);
                                      MP4 clips for a text-to-video model (``frames``)
    <out>/<arm>/geneval_results.jsonl per-image GenEval rows, when GenEval runs
    <out>/results.json, <out>/report.html
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch


from diffalign.arguments import COUNT, SCALE, SEED, SIDE

def load_records(source: str, column: str | None = None, limit: int | None = None, geneval_seed: int = 43,
                 geneval_n: int = 100) -> list[dict]:
    """Prompt records: ``geneval`` (our port of its generator), a GenEval ``evaluation_metadata.jsonl``,
    or any prompt set :func:`diffalign.data.prompts.read_prompts` reads (records ``{"prompt": ...}``)."""
    from diffalign.data.prompts import read_prompts
    from diffalign.evaluation.geneval_prompts import generate_prompts, read_metadata

    if source == "geneval":
        records = generate_prompts(seed=geneval_seed, n=geneval_n)
    elif source.endswith("evaluation_metadata.jsonl"):
        records = read_metadata(source)
    else:
        records = [{"prompt": p} for p in read_prompts(source, column=column)]
    return records[:limit] if limit is not None else records


def _geneval_arm(folder: Path, detector, colors, progress: bool) -> dict:
    from diffalign.evaluation.geneval import score_folder
    from diffalign.evaluation.geneval_rules import summarise

    rows = score_folder(folder, detector, colors, progress=progress)
    with open(folder / "geneval_results.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return summarise(rows) | {"per_prompt": _per_prompt(rows)}


def _per_prompt(rows: list[dict]) -> dict[int, float]:
    out: dict[int, list[bool]] = {}
    for row in rows:
        out.setdefault(row["prompt_index"], []).append(bool(row["correct"]))
    return {i: sum(v) / len(v) for i, v in sorted(out.items())}


def evaluate(records: list[dict], out: str | Path, base, candidate, rewards: list, detector=None, colors=None,
             source: str = "", batch_size: int = 4, reward_batch_size: int = 16, device: str = "cpu",
             progress: bool = True, regenerate: bool = False) -> dict:
    """Run the whole evaluation; returns (and writes) ``results.json``'s content.

    Args:
        base, candidate: :class:`~diffalign.evaluation.generate.GenerationSettings` differing only in
            ``model``/``lora`` (seeds, steps, guidance and resolution must match).
        rewards: loaded reward models (may be empty).
        detector: a GenEval :class:`~diffalign.evaluation.geneval_rules.Detector`, or None for no GenEval;
            GenEval needs records with a ``tag``.
        regenerate: remake an arm's images when they were made from other weights or settings
            (without it, that is an error; images of unchanged weights are always reused).
    """
    from diffalign.evaluation.compare import compare_scores, pick_probability, score_folder
    from diffalign.evaluation.generate import generate_images
    from diffalign.evaluation.report import write_report

    if replace(base, model="", lora=None) != replace(candidate, model="", lora=None):
        raise ValueError("base and candidate must share samples, seed, steps, guidance and resolution")
    if detector is not None and not all("tag" in r for r in records):
        raise ValueError("GenEval needs GenEval records (use --prompts geneval or an evaluation_metadata.jsonl)")
    video = base.frames is not None
    if video and detector is not None:
        raise ValueError("GenEval scores images, not videos: pass --no-geneval (and --reward) for a video model")
    if video:  # an image reward scores a clip by the mean over its frames
        from diffalign.rewards.video import FrameAveraged, scores_videos

        rewards = [r if scores_videos(r) else FrameAveraged(r, frames="all") for r in rewards]
    out = Path(out)
    dirs = {"base": out / "base", "candidate": out / "candidate"}
    for arm, settings in (("base", base), ("candidate", candidate)):
        generate_images(records, dirs[arm], settings, batch_size=batch_size, device=device, progress=progress,
                        regenerate=regenerate)
    prompts = [r["prompt"] for r in records]
    generation = {k: v for k, v in asdict(base).items() if k not in ("model", "lora")}
    results = {
        "base": {"label": base.model + (f" + LoRA {base.lora}" if base.lora else ""), "model": base.model, "lora": base.lora},
        "candidate": {"label": candidate.model + (f" + LoRA {candidate.lora}" if candidate.lora else ""),
                      "model": candidate.model, "lora": candidate.lora},
        "generation": generation, "prompts": {"source": source, "count": len(records)}, "rewards": {},
    }
    scores = {arm: score_folder(dirs[arm], prompts, base.samples, rewards, reward_batch_size, progress, video=video)
              for arm in dirs}
    results["per_prompt"] = {r.label: {arm: scores[arm][r.label].double().mean(1).tolist() for arm in dirs}
                             for r in rewards}
    for reward in rewards:
        label = reward.label
        entry = compare_scores(scores["base"][label], scores["candidate"][label])
        if getattr(reward, "name", None) == "pickscore" and not video:
            from diffalign.evaluation.stats import bootstrap_mean

            probs = pick_probability(reward, dirs["base"], dirs["candidate"], prompts, base.samples)
            entry["pick_probability"] = bootstrap_mean(probs.double().mean(1)).as_dict()
        results["rewards"][label] = entry
    if detector is not None:
        results["geneval"] = {
            "label": f"GenEval (detector={detector.name})", "detector": detector.name,
            "color_classifier": getattr(colors, "name", None),
            **{arm: _geneval_arm(dirs[arm], detector, colors, progress) for arm in dirs},
        }
    if rewards:
        label = rewards[0].label
        delta = (scores["candidate"][label] - scores["base"][label]).double().mean(1).tolist()
        results["deltas"] = {"reward": label, "prompts": prompts, "delta": delta}
    elif detector is not None:
        g = results["geneval"]
        delta = [g["candidate"]["per_prompt"][i] - g["base"]["per_prompt"][i] for i in range(len(records))]
        results["deltas"] = {"reward": g["label"] + " correct fraction", "prompts": prompts, "delta": delta}
    results["files"] = {"results": str(out / "results.json"), "report": str(out / "report.html")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, out / "report.html", dirs["base"], dirs["candidate"])
    return results


# ----------------------------------------------------------------------------- command
ARMS = ("base", "candidate")
"""An evaluation's two folders of samples; an arm's ``generation.json`` is the evaluation's record."""


def check_out(args: argparse.Namespace) -> None:
    """``--out`` apart from every input, and new, empty or an earlier evaluation's (whose arms
    hold their ``generation.json``): the rule of :mod:`diffalign.outputs`."""
    from diffalign.outputs import check_apart, refuse_unless_empty

    inputs = {"--base": args.base, "--candidate": args.candidate, "--base-lora": args.base_lora,
              "--candidate-lora": args.candidate_lora, "--prompts": args.prompts, "--model": args.model,
              "--detector-model": args.detector_model, "--color-model": args.color_model}
    check_apart(args.out, inputs, "--out")
    out = Path(args.out)
    if not any((out / arm / "generation.json").is_file() for arm in ARMS):
        refuse_unless_empty(out, "--out", f"evaluation (no {'/'.join(ARMS)}/generation.json)")


def check_sizes(args: argparse.Namespace, device: str) -> None:
    """One generation batch's decoded pixels must fit in free memory: a mistyped --height is
    refused here, not after the pipelines load."""
    from diffalign.resources import pixel_bytes, require_memory

    if args.height is None and args.width is None:
        return  # the pipeline's own size
    side = args.height or args.width
    need = pixel_bytes(args.gen_batch_size, args.height or side, args.width or side, args.frames)
    require_memory(need, f"--gen-batch-size {args.gen_batch_size} at {args.height or side}×{args.width or side}"
                   + (f", {args.frames} frames" if args.frames else ""), "lower --height/--width or --gen-batch-size",
                   device=device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from diffalign.rewards.cli import add_reward_arguments

    parser.add_argument("--base", required=True, help="base diffusers pipeline: folder or hub id")
    parser.add_argument("--base-lora", default=None, help="LoRA folder loaded into the base with load_lora_weights")
    parser.add_argument("--candidate", default=None, help="candidate pipeline (folder or hub id; default: --base, "
                        "e.g. with --candidate-lora; a fully fine-tuned model is its own pipeline folder)")
    parser.add_argument("--candidate-lora", default=None, help="LoRA folder loaded into the candidate")
    parser.add_argument("--prompts", default="geneval", help="'geneval' (our port of its prompt generator), a GenEval "
                        "evaluation_metadata.jsonl, or any prompt set (.txt/.json/.jsonl/.csv/.tsv or hub dataset) (default: geneval)")
    parser.add_argument("--prompt-column", default=None, help="prompt field of a records file or dataset")
    parser.add_argument("--limit", type=COUNT, default=None, help="evaluate only the first N prompts")
    parser.add_argument("--geneval-seed", type=SEED, default=43, help="seed of the GenEval prompt generator (default: 43, the published set)")
    parser.add_argument("--geneval-n", type=COUNT, default=100, help="GenEval draws per tag (default: 100)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (resumable: images made from the same "
                        "weights, by content, and settings are reused)")
    parser.add_argument("--regenerate", action="store_true", help="remake the images of an arm whose weights or "
                        "settings changed since --out was written (default: refuse)")
    parser.add_argument("--samples", type=COUNT, default=4, help="images per prompt (default: 4, as GenEval)")
    parser.add_argument("--seed", type=SEED, default=42, help="image k of prompt i uses seed SEED + i*SAMPLES + k (default: 42)")
    parser.add_argument("--steps", type=COUNT, default=50, help="sampling steps (default: 50)")
    parser.add_argument("--guidance", type=SCALE, default=9.0, help="classifier-free guidance scale (default: 9.0, as GenEval)")
    parser.add_argument("--height", type=SIDE, default=None, help="image height (default: the pipeline's)")
    parser.add_argument("--width", type=SIDE, default=None, help="image width (default: the pipeline's)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt for every image")
    parser.add_argument("--frames", type=COUNT, default=None, help="text-to-video models (Wan): frames per clip, "
                        "1 + 4n (e.g. 81); image rewards score the mean over each clip's frames")
    parser.add_argument("--fps", type=COUNT, default=16, help="frame rate of the saved clips (default: 16)")
    parser.add_argument("--gen-batch-size", type=COUNT, default=4, help="images per pipeline call (default: 4)")
    add_reward_arguments(parser, several=True, required=False)
    parser.add_argument("--no-geneval", action="store_true", help="skip GenEval scoring of GenEval prompts")
    parser.add_argument("--detector", default="mask2former", help="GenEval detector: 'mask2former' (transformers "
                        "COCO-instance) or module:factory returning an object with detect(image) (default: mask2former)")
    parser.add_argument("--detector-model", default=None, help="weights of the Mask2Former detector (default: "
                        "facebook/mask2former-swin-small-coco-instance)")
    parser.add_argument("--color-classifier", default="clip", help="GenEval colour classifier: 'clip', 'mean-rgb' or "
                        "module:factory (default: clip)")
    parser.add_argument("--color-model", default=None, help="CLIP weights of the colour classifier (default: openai/clip-vit-large-patch14)")


def run(args: argparse.Namespace) -> int:
    from diffalign.data.prompts import PromptSourceError
    from diffalign.errors import DiffalignError
    from diffalign.evaluation.generate import GenerationMismatchError, GenerationSettings
    from diffalign.evaluation.geneval_models import load_color_classifier, load_detector
    from diffalign.evaluation.geneval_prompts import MetadataError
    from diffalign.rewards import RewardLoadError
    from diffalign.rewards.cli import ScoreInputError, load_rewards_from_args

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        check_out(args)
        records = load_records(args.prompts, args.prompt_column, args.limit, args.geneval_seed, args.geneval_n)
        if not records:
            raise ScoreInputError(f"the prompt set {args.prompts} has no prompts: nothing to generate or score")
        check_sizes(args, device)
        geneval = not args.no_geneval and args.frames is None and all("tag" in r for r in records)
        if not geneval and not args.reward:
            raise ScoreInputError("nothing to score: give --reward, or GenEval prompts without --no-geneval")
        rewards = load_rewards_from_args(args) if args.reward else []
        detector = load_detector(args.detector, args.detector_model, device) if geneval else None
        colors = load_color_classifier(args.color_classifier, args.color_model, device) if geneval else None
        base = GenerationSettings(args.base, args.base_lora, args.samples, args.seed, args.steps, args.guidance,
                                  args.height, args.width, args.negative_prompt, args.frames, args.fps)
        candidate = replace(base, model=args.candidate or args.base, lora=args.candidate_lora)
        results = evaluate(records, args.out, base, candidate, rewards, detector, colors, source=args.prompts,
                           batch_size=args.gen_batch_size, reward_batch_size=args.batch_size, device=device,
                           progress=not args.no_progress, regenerate=args.regenerate)
    except (PromptSourceError, MetadataError, GenerationMismatchError, RewardLoadError, ScoreInputError, ValueError,
            DiffalignError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for label, r in results["rewards"].items():
        w = r["win_rate"]
        print(f"{label}: base {r['base']['value']:.4g}, candidate {r['candidate']['value']:.4g}, "
              f"win-rate {w['value']:.3f} [{w['low']:.3f}, {w['high']:.3f}]")
    if "geneval" in results:
        g = results["geneval"]
        print(f"{g['label']}: base {g['base']['overall']:.3f}, candidate {g['candidate']['overall']:.3f}")
    print(f"results: {results['files']['results']}\nreport: {results['files']['report']}")
    return 0
