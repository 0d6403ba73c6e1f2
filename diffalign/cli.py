"""The ``diffalign`` command.

Subcommands that have not landed yet say so and exit with status 2; none pretends to work.
"""

from __future__ import annotations

import argparse
import sys

# subcommand -> (help, the issue that brings it)
_PLANNED = {
    "train": ("train a model with a preference objective", "the trainer issue (#4)"),
    "cache": ("precompute VAE latents and prompt embeddings for a dataset", "the preference-data issue (#3)"),
    "build": ("build a preference dataset (pick-a-pic, synthetic, dual captions, filter)", "the dataset issues (#3, #7)"),
    "score": ("score images with reward models", "the reward-model issue (#6)"),
    "evaluate": ("evaluate checkpoints: GenEval, rewards, win-rate, HTML report", "the evaluation issue (#8)"),
    "demo": ("run the CPU toy alignment end to end", "the toy benchmark issue (#5)"),
}


def _not_yet(name: str):
    def run(args: argparse.Namespace) -> int:
        print(f"diffalign {name} is not yet available: it arrives with {_PLANNED[name][1]}.", file=sys.stderr)
        return 2

    return run


def _info(args: argparse.Namespace) -> int:
    from diffalign.families import FamilyError, detect_family

    try:
        found = detect_family(args.path, revision=args.revision)
    except FamilyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"family: {found.family}\nprediction_type: {found.prediction_type}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from diffalign.config import ConfigError, load_config, to_dict

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import yaml

    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from diffalign import __version__

    parser = argparse.ArgumentParser(prog="diffalign", description="Align diffusion models with human preferences.")
    parser.add_argument("--version", action="version", version=f"diffalign {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="detect the model family of a diffusers pipeline folder or hub id")
    info.add_argument("path")
    info.add_argument("--revision", default=None)
    info.set_defaults(run=_info)

    check = sub.add_parser("check-config", help="validate a training config and print it with defaults filled in")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5")
    check.set_defaults(run=_check_config)

    for name, (help_text, _) in _PLANNED.items():
        planned = sub.add_parser(name, help=f"{help_text} (not yet available)")
        planned.set_defaults(run=_not_yet(name), planned=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A planned command takes any arguments so that it can say it is not yet available
    # instead of failing on arguments it does not know yet.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "planned", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
