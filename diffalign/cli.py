"""The ``diffalign`` command.

An error in what the user gave (any :class:`~diffalign.errors.DiffalignError`, and the errors
:func:`~diffalign.errors.describe` knows: a full disk, a file that unpickles code, a corrupt
safetensors file, too little memory) is printed as one ``error: …`` line, exit status 1;
``--debug`` (anywhere on the command line) prints the traceback as well. Any other traceback
means a bug. Under ``accelerate launch`` the launcher adds its own traceback of the child's exit
status after that line: it is accelerate's, not a second error. ``train``, ``cache`` and ``build``
stop cleanly on SIGTERM or SIGINT, keeping their work (:mod:`diffalign.stopping`), with status
128 + the signal's number.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from diffalign.arguments import COUNT

# Commands that stop at a whole step on SIGTERM/SIGINT, keeping what they did.
_STOPPABLE = ("train", "cache", "build")


def _info(args: argparse.Namespace) -> int:
    from diffalign.families import FAMILIES, detect_family

    found = detect_family(args.path, revision=args.revision)
    print(f"family: {found.family}\nprediction_type: {found.prediction_type}")
    architecture = FAMILIES[found.family].architecture(args.path, revision=args.revision)
    if architecture:
        print(f"architecture: {architecture}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import yaml

    from diffalign.config import load_config, to_dict
    from diffalign.training.checks import preflight

    config = load_config(args.config, args.overrides)
    plan = preflight(config).cache  # exactly what `diffalign train` checks before it loads a model
    print(f"latent cache: {plan.action} {plan.folder} ({plan.reason})", file=sys.stderr)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0


# Commands whose module provides ``add_arguments(parser)`` and ``run(args)``:
# name -> (module, help, description).
_MODULE_COMMANDS = {
    "cache": (
        "diffalign.data.cache", "precompute VAE posteriors and prompt embeddings of a dataset",
        "Encode a preference dataset once with a model's VAE and text encoders, so that training loads "
        "neither. Resumable; split across processes under `accelerate launch`.",
    ),
    "score": (
        "diffalign.rewards.cli", "score images or videos with reward models",
        "Score a folder of images or videos, or every item of a preference dataset, with reward models (PickScore, "
        "HPSv2/v2.1, ImageReward, CLIP score, aesthetic; videos: averaged over --frames, or temporal_consistency) "
        "and write a Parquet or JSON file of scores, or, with "
        "--into OUT, a copy of a preference dataset with its scores column filled (SmPO's labels).",
    ),
    "evaluate": (
        "diffalign.evaluation.evaluate", "evaluate checkpoints: GenEval, rewards, win-rate, HTML report",
        "Generate images (or, with --frames, videos) of a prompt set with a base and a candidate checkpoint on "
        "identical seeds (GenEval's "
        "folder layout, resumable), score them with reward models and GenEval, and write results.json and a "
        "self-contained report.html.",
    ),
}


def _add_module_commands(sub) -> None:
    import importlib

    for name, (module_name, help_text, description) in _MODULE_COMMANDS.items():
        module = importlib.import_module(module_name)
        parser = sub.add_parser(name, help=help_text, description=description)
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)


def _add_build(sub) -> None:
    from diffalign.builders import dual_captions, experts, filtering, pick_a_pic, prompts, synthetic, video_pairs

    build = sub.add_parser("build", help="build a preference dataset")
    builders = build.add_subparsers(dest="builder", required=True, metavar="BUILDER")
    for name, module, help_text in (
        ("pick-a-pic", pick_a_pic, "Pick-a-Pic v2 human pairs -> best-first groups"),
        ("video-pairs", video_pairs, "human video pairs, Pick-a-Pic style -> best-first groups of two videos"),
        ("synthetic", synthetic, "synthetic ranked groups: generators' images scored by reward models"),
        ("dual-captions", dual_captions, "a caption per image for DCPO: captioning, perturbation or hybrid"),
        ("filter", filtering, "keep the top fraction of pairs by reward margin, prompt quality and diversity"),
        ("experts", experts, "one expert image per row (K = 1, Diffusion-DRO): each row's best, or the top N by score"),
        ("prompts", prompts, "prompt-only train/eval datasets (K = 0) for online RL: a prompt file, a dataset or GenEval"),
    ):
        parser = builders.add_parser(name, help=help_text, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)


def _add_train(sub) -> None:
    train = sub.add_parser(
        "train", help="train a model with a preference objective",
        description="Train with a YAML config (see training/configs/). Launch on several GPUs with "
        "`accelerate launch -m diffalign train --config ...`.",
    )
    train.add_argument("--config", required=True, help="YAML training config")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 objective.beta=2500")
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from diffalign.config import load_config
    from diffalign.training import train

    result = train(load_config(args.config, args.overrides))
    if result.is_main_process:
        skipped = f" ({result.skipped_steps} skipped: non-finite loss or gradient norm, or no readable data)" \
            if result.skipped_steps else ""
        print(f"trained {result.steps} steps{skipped}; weights in {result.weights}")
    return 0


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo", help="align a tiny model on a toy world end to end, on the CPU, with no downloads",
        description="Take the tiny SD1.5-style model pretrained on 32x32 coloured shapes (shipped with the package), "
        "build preference data scored by a programmatic reward, align with an objective, and report the "
        "reward gain, win-rate and prompt following. About 2 minutes on 2 CPU cores.",
    )
    demo.add_argument("--out", default="outputs/demo", help="folder for the report and images (default: outputs/demo)")
    demo.add_argument("--objective", action="append", dest="objectives", default=None,
                      help="objective to run, or a variant (spo_oracle, grpo_fast, mixgrpo); repeatable; default: "
                      "diffusion_dpo. With diffusion_dpo and another, the report compares them at equal updates "
                      "and at Diffusion-DPO's wall-clock budget")
    demo.add_argument("--steps", type=COUNT, default=None, help="training steps per objective (default: the benchmark's)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from diffalign.toy.benchmark import DEMO, BenchmarkConfig, run_benchmark
    from diffalign.toy.report import markdown_table

    config = BenchmarkConfig(objectives=tuple(args.objectives or ["diffusion_dpo"]), **DEMO)
    if args.steps is not None:
        config = replace(config, train_steps=args.steps)
    results = run_benchmark(args.out, config, progress=not args.no_progress)
    print(markdown_table(results))
    print(f"report: {results['files']['report']}\nresults: {args.out}/results.json\n"
          f"reward curve: {results['files']['plot']}")
    for name, r in results["objectives"].items():
        print(f"before/after images ({name}): {r['grid']}")
    return 0


def _add_make_tiny(sub) -> None:
    from diffalign.toy import starter

    tiny = sub.add_parser("make-tiny", help="write the toy model and data that training/configs/tiny/ train on",
                          description=starter.__doc__.split("\n\n")[0])
    tiny.add_argument("--out", default="outputs/tiny", help="folder to write model/, pairs/ and ranked/ into "
                      "(default: outputs/tiny, where the tiny configs look)")
    tiny.set_defaults(run=_make_tiny)


def _make_tiny(args: argparse.Namespace) -> int:
    from diffalign.toy.starter import write_starter

    folders = write_starter(args.out)
    print("\n".join(f"{name}: {folder}" for name, folder in folders.items()))
    print("next: diffalign train --config training/configs/tiny/diffusion_dpo.yaml")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from diffalign import __version__

    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models with human preferences.")
    parser.add_argument("--version", action="version", version=f"diffalign {__version__}")
    parser.add_argument("--debug", action="store_true", help="with an error, print its traceback too (may be given "
                        "anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="detect the model family of a diffusers pipeline folder or hub id")
    info.add_argument("path")
    info.add_argument("--revision", default=None)
    info.set_defaults(run=_info)

    check = sub.add_parser("check-config", help="validate a training config and print it with defaults filled in")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5")
    check.set_defaults(run=_check_config)

    _add_train(sub)
    _add_demo(sub)
    _add_make_tiny(sub)
    _add_build(sub)
    _add_module_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from diffalign import stopping
    from diffalign.errors import DiffalignError, Stopped, describe

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    stops = stopping.stop_requests() if args.command in _STOPPABLE else contextlib.nullcontext()
    try:
        with stops:
            return args.run(args)
    except DiffalignError as err:
        return _error(str(err), debug)
    except Stopped as stop:
        if os.environ.get("RANK", "0") == "0":  # every process stopped at the same point; one says so
            print(stop.message, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # commands that keep nothing half-done stop at once on Ctrl-C
        print(f"interrupted: diffalign {args.command} stopped", file=sys.stderr)
        return 130
    except Exception as err:
        message = describe(err)
        if message is None:
            raise  # a bug: the traceback is what to report
        return _error(message, debug)


def _error(message: str, debug: bool) -> int:
    """Print ``error: message`` (after the traceback with ``--debug``); exit status 1."""
    if debug:
        import traceback

        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
