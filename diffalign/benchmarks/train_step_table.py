"""The training-step benchmark's table (:mod:`.train_step`): each row's ratios to the baselines,
the rounds combined into one row per set-up, the columns shown, and the one-off costs listed
under the table."""

from __future__ import annotations

import statistics

BASELINES = ("peer", "naive")
"""What the ratios are against, the table's first ratio columns first."""


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's ratios to each baseline present (:data:`BASELINES`): ``speedup_<base>``
    (pairs/s ÷ the baseline's, or ÷ ``paired_<base>_pairs_per_s``, the run it took turns with), ``memory_ratio_<base>`` (peak ÷ the baseline's) and, on CPU,
    ``tensor_memory_ratio_<base>``."""
    for base in BASELINES:
        ref = next((r for r in rows if r["setup"] == base), None)
        if ref is None:
            continue
        for row in rows:
            # In lock-step a row's own run of the peer is its baseline (train_step_setups.run_paired).
            row[f"speedup_{base}"] = row["pairs_per_s"] / row.get(f"paired_{base}_pairs_per_s", ref["pairs_per_s"])
            row[f"memory_ratio_{base}"] = row["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else None
            if row.get("tensor_peak_mib") is not None and ref.get("tensor_peak_mib"):
                row[f"tensor_memory_ratio_{base}"] = row["tensor_peak_mib"] / ref["tensor_peak_mib"]
    return rows


def combine_rounds(rounds: list[list[dict]], args) -> list[dict]:
    """One row per set-up from ``rounds`` (each a list of rows, one per set-up, with ratios).

    A round runs every set-up back to back, so a slow spell of the machine (on the shared 2-core
    machine, whole runs differed by 25 %) hits both sides of a ratio: ``speedup_<base>`` and
    ``memory_ratio_<base>`` are the medians over rounds of each round's ratio, with the range
    beside them. Step time is the median of every timed step of every round; peak RSS the median over
    rounds; FLOPs and tensor memory come from the first round.
    """
    combined = []
    for i, first in enumerate(rounds[0]):
        per_round = [r[i] for r in rounds]
        times = [t for row in per_round for t in row["step_times_s"]]
        row = {**first, "rounds": len(per_round), "step_times_s": times,
               "round_step_times_s": [row["step_times_s"] for row in per_round],
               "round_peak_mib": [row["peak_mib"] for row in per_round],
               "median_step_s": statistics.median(times), "peak_mib": statistics.median(r["peak_mib"] for r in per_round)}
        row["pairs_per_s"] = args.batch_size / row["median_step_s"]
        for base in BASELINES:
            for key in (f"speedup_{base}", f"memory_ratio_{base}"):
                values = [r[key] for r in per_round if r.get(key) is not None]
                if values:
                    row[key] = statistics.median(values)
                    spread = len(values) > 1 and first["setup"] != base  # a baseline's own ratios are all 1
                    row[f"{key}_range"] = f"{min(values):.2f}–{max(values):.2f}" if spread else None
        if row.get("flops_per_step") is not None:
            row["tflops_per_s"] = row["flops_per_step"] / row["median_step_s"] / 1e12
            if args.peak_tflops:
                row["mfu"] = row["tflops_per_s"] / args.peak_tflops
        combined.append(row)
    return combined


def columns(device: str) -> list[tuple[str, str, str]]:
    """The table's ``(key, header, format)`` columns: the ratios to the peer script first, to the
    naive loop second (the caller drops columns no row has).

    The memory the ratios are judged by is *allocated* memory: CUDA's ``max_memory_allocated``,
    and on CPU its counterpart, the peak of live tensor bytes (:class:`.measure.TensorMemory`).
    On CPU the RSS increase follows beside it. It is not the headline because it counts what
    glibc's heap keeps, as CUDA's *reserved* memory counts what the caching allocator keeps:
    on the tiny SDXL the heap's top reached 1.5–2.2× the bytes in use (``mallinfo2``), and a
    compiled set-up's RSS also holds the host memory of tracing the model.
    """
    speed = [("setup", "set-up", ""), ("median_step_s", "step (s)", ".4f"), ("pairs_per_s", "pairs/s", ".2f")]
    for base in BASELINES:
        speed += [(f"speedup_{base}", f"× {base} pairs/s", ".2f"), (f"speedup_{base}_range", "range", "")]
    flops = [("tflops_per_s", "TFLOP/s", ".3g"), ("mfu", "MFU", ".1%")]
    if device.startswith("cuda"):
        memory = [("peak_mib", "peak allocated (MiB)", ".1f")]
        for base in BASELINES:
            memory += [(f"memory_ratio_{base}", f"× {base} allocated", ".2f"), (f"memory_ratio_{base}_range", "range", "")]
        return speed + memory + flops
    memory = [("tensor_peak_mib", "peak allocated (MiB)", ".1f")]
    memory += [(f"tensor_memory_ratio_{base}", f"× {base} allocated", ".2f") for base in BASELINES]
    memory += [("peak_mib", "peak RSS (MiB)", ".1f")]
    for base in BASELINES:
        memory += [(f"memory_ratio_{base}", f"× {base} RSS", ".2f"), (f"memory_ratio_{base}_range", "range", "")]
    return speed + memory + flops


def one_off_costs(extra: dict) -> str:
    """The costs paid once and kept out of the rows, as Markdown lines under the table."""
    lines = [f"- latent cache build (once per dataset and resolution): {extra['cache_build_s']:.1f} s"]
    if "compiler_startup_mib" in extra:
        lines.append(f"- compiler start-up (once per process): {extra['compiler_startup_mib']:.0f} MiB")
    for setup, cost in extra.get("first_compile", {}).items():
        lines.append(f"- first compile of {setup} (once per model and shape; its rows then compile from a warm cache): "
                     f"{cost['seconds']:.0f} s, peak memory {cost['peak_mib']:.1f} MiB")
    return "\n".join(lines) + "\n"
