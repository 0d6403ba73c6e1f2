"""``python benchmarks/peer_table.py --peer-script PATH``: the README's tables against diffusers'
DPO SDXL script (:mod:`.peer`), made by :mod:`.train_step` on the tiny and the mini SDXL, and the
end-to-end table (:mod:`.end_to_end`: whole runs and a sweep, launch to exit) on the mini one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffalign.benchmarks.end_to_end import end_to_end_table
from diffalign.benchmarks.peer import PEER_SCRIPT
from diffalign.benchmarks.train_step import main as train_step_main

PEER_TABLES = {
    "tiny": ("the unit tests' tiny SDXL, 64 px, 4 pairs per step", ["--batch-size", "4"]),
    "mini": ("SDXL's architecture at 1/8 width (`--size mini`), 256 px, 1 pair per step",
             ["--size", "mini", "--batch-size", "1"]),
}
PEER_TABLE_SETUPS = ("peer", "naive", "diffalign", "diffalign-uncached")


def table_main(argv: list[str] | None = None) -> int:
    """``python benchmarks/peer_table.py --peer-script PATH``: the README's peer tables, tiny and
    mini SDXL, each a :mod:`.train_step` run of :data:`PEER_TABLE_SETUPS`; writes
    ``train_step-peer-<size>.json/.md`` and both tables in ``train_step-peer.md``."""
    import shlex

    p = argparse.ArgumentParser(prog="benchmarks/peer_table.py", description=table_main.__doc__.split("\n")[0])
    p.add_argument("--peer-script", required=True, metavar="PATH", help=f"DIFFUSERS/{PEER_SCRIPT}")
    p.add_argument("--sizes", nargs="+", choices=sorted(PEER_TABLES), default=list(PEER_TABLES))
    p.add_argument("--extra-setups", nargs="*", default=[], help="more train_step set-ups, e.g. diffalign+regional")
    p.add_argument("--lockstep", action="store_true",
                   help="each set-up takes turns with its own run of the peer, step by step (train_step.py --lockstep)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--end-to-end-sizes", nargs="*", choices=sorted(PEER_TABLES), default=["mini"],
                   help="sizes that also get the end-to-end table (none: leave it out)")
    p.add_argument("--end-to-end-pairs", type=int, default=16, help="pairs of the end-to-end runs' epoch")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    sections = []
    for size in args.sizes:
        title, size_args = PEER_TABLES[size]
        name = f"train_step-peer-{size}"
        train_step_main([*size_args, "--setups", *PEER_TABLE_SETUPS, *args.extra_setups, "--peer-script", args.peer_script,
                         "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup),
                         "--out", args.out, "--name", name, *(["--lockstep"] if args.lockstep else [])])
        table = (Path(args.out) / f"{name}.md").read_text().split("\n\n", 1)[1]
        sections.append(f"**{title[0].upper()}{title[1:]}**\n\n{table}")
        if size in args.end_to_end_sizes:
            sections.append(end_to_end_table([*size_args, "--peer-script", args.peer_script, "--rounds", str(args.rounds),
                                              "--pairs", str(args.end_to_end_pairs)],
                                             args.out, f"end_to_end-peer-{size}", argv))
    command = shlex.join(["python", "benchmarks/peer_table.py", *argv])
    (Path(args.out) / "train_step-peer.md").write_text(f"Command: `{command}`\n\n" + "\n".join(sections))
    return 0
