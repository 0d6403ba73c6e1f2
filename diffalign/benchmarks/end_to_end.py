"""End to end against the peer: what a user waits for, from launch to exit.

A step's speed leaves out what diffalign pays once per dataset (the Pick-a-Pic conversion, the
latent cache, the reference pass) and what every run pays (imports, loading the model, saving).
This measures whole runs, each a child process started as a user starts it:

- **one run** of one epoch: the peer script (``python train_diffusion_dpo_sdxl.py ...``) against
  ``diffalign build pick-a-pic`` followed by ``diffalign train`` on a fresh copy of the pairs,
  so diffalign's row includes converting the data, building its cache and its reference pass;
- **a sweep** of four runs on the same data (β = 5000, 2500, 1000, 500, the usual sweep): the
  peer script run four times against one conversion and four ``diffalign train`` runs, the
  first of which builds the cache and the pass the other three read.

Each round runs both sides back to back on a fresh dataset folder; the ratio (peer seconds ÷
diffalign seconds) is taken per round and reported as the median with its range.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

SWEEP_BETAS = (5000, 2500, 1000, 500)
"""β of the sweep's runs; the first is both sides' default. Integers: the peer script's
``--beta_dpo`` is an ``int`` argument."""


def timed(command: list[str]) -> float:
    """Seconds ``command`` took from start to exit; a failure raises with the output's tail."""
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}):\n{tail}")
    return seconds


def epoch_steps(args) -> int:
    """Optimiser steps in one epoch of ``args.pairs`` pairs (both sides drop no pair: whole batches)."""
    if args.pairs % args.batch_size:
        raise ValueError(f"--pairs {args.pairs} is not a whole number of batches of {args.batch_size}")
    return args.pairs // args.batch_size


def peer_runs(args, model: str, parquet: Path, work: Path, runs: int) -> list[float]:
    """Seconds of each of ``runs`` peer-script runs of one epoch (β from :data:`SWEEP_BETAS`)."""
    from diffalign.benchmarks.peer import peer_arguments

    return [timed([sys.executable, str(args.peer_script),
                   *peer_arguments(args, model, parquet, work / f"peer-{i}", epoch_steps(args)),
                   "--beta_dpo", str(beta)])
            for i, beta in enumerate(SWEEP_BETAS[:runs])]


def diffalign_runs(args, model: str, parquet: Path, work: Path, runs: int) -> list[float]:
    """Seconds of each of ``runs`` diffalign runs of one epoch on a fresh conversion of
    ``parquet``; the first run's includes the conversion (and, inside ``train``, the cache and
    the reference pass)."""
    import yaml

    from diffalign.benchmarks.train_step_setups import diffalign_raw_config

    data = work / "data"
    convert = timed([sys.executable, "-m", "diffalign", "build", "pick-a-pic", str(parquet), "--out", str(data),
                     "--no-progress"])
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(diffalign_raw_config(args, model, data, work / "out", "diffalign",
                                                          steps=epoch_steps(args))))
    seconds = [timed([sys.executable, "-m", "diffalign", "train", "--config", str(config),
                      f"objective.beta={beta}", f"output_dir={work / f'run-{i}'}"])
               for i, beta in enumerate(SWEEP_BETAS[:runs])]
    seconds[0] += convert
    return seconds


def one_round(args, model: str, parquet: Path, work: Path, runs: int = len(SWEEP_BETAS)) -> dict:
    """Both sides' run seconds in one round (diffalign first: the peer never sees a warmer disk)."""
    work.mkdir(parents=True)
    ours = diffalign_runs(args, model, parquet, work / "diffalign", runs)
    peer = peer_runs(args, model, parquet, work / "peer", runs)
    return {"diffalign_s": ours, "peer_s": peer}


def summarise(rounds: list[dict]) -> list[dict]:
    """Rows ``one run`` and ``sweep of N``: median seconds per side and the peer ÷ diffalign ratio
    (median and range over rounds, each round's ratio from its own two sides)."""
    rows = []
    for label, pick in (("one run of one epoch", lambda s: s[0]), (f"sweep of {len(rounds[0]['peer_s'])} runs", sum)):
        peer = [pick(r["peer_s"]) for r in rounds]
        ours = [pick(r["diffalign_s"]) for r in rounds]
        ratios = [p / o for p, o in zip(peer, ours)]
        rows.append({"what": label, "peer_s": statistics.median(peer), "diffalign_s": statistics.median(ours),
                     "speedup": statistics.median(ratios), "range": f"{min(ratios):.2f}–{max(ratios):.2f}"})
    return rows


def markdown(rows: list[dict], args) -> str:
    """The end-to-end table, its settings in the line above it."""
    head = (f"End to end, launch to exit: {args.pairs} pairs, batch {args.batch_size}, one epoch per run, "
            f"{args.rounds} rounds\n\n")
    lines = ["| what | peer (s) | diffalign (s) | × peer | range |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['peer_s']:.1f} | {r['diffalign_s']:.1f} | {r['speedup']:.2f} | {r['range']} |"
              for r in rows]
    return head + "\n".join(lines) + "\n"


def end_to_end_table(train_step_argv: list[str], out: str | Path, name: str, argv: list[str],
                     runs: int = len(SWEEP_BETAS)) -> str:
    """Build the model and the Pick-a-Pic pairs as :mod:`.train_step` does for ``train_step_argv``
    (``--size``, ``--batch-size``, ``--pairs``, ``--rounds``, ``--peer-script`` ...), run the rounds,
    write ``<name>.json/.md`` in ``out`` and return the table."""
    import tempfile

    from diffalign.benchmarks.measure import write_report
    from diffalign.benchmarks.peer import write_pick_a_pic_parquet
    from diffalign.benchmarks.train_step import apply_defaults, parser, prepare_model

    args = parser().parse_args(train_step_argv)
    apply_defaults(args)
    epoch_steps(args)  # refuse a partial batch before building anything
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = prepare_model(args, work)
        parquet = write_pick_a_pic_parquet(work / "pick_a_pic", args.pairs, args.resolution)
        rounds = []
        for r in range(args.rounds):
            print(f"[end_to_end] round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            rounds.append(one_round(args, model, parquet, work / f"round-{r}", runs))
    rows = summarise(rounds)
    table = markdown(rows, args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "name")}
    write_report(out, name, {"settings": settings, "rounds": rounds, "rows": rows}, table, "peer_table.py", argv)
    return table
