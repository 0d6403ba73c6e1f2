"""``report.html``: one self-contained page (inline CSS, images as base64 PNG data URIs; videos
as animated WebP data URIs, which every current browser plays without a video element).

Sections: a table of metrics with their 95 % intervals, per-tag GenEval bars for each checkpoint,
and base-vs-candidate grids for the prompts with the largest and smallest score delta, each
captioned with that prompt's mean reward for both checkpoints.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from diffalign.evaluation.generate import sample_path

_STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#eee}td.name,td.bars{text-align:left}
.bar{display:inline-block;height:14px;background:#4a7fd4;vertical-align:middle}
.bar.cand{background:#e08a2c}.pair{display:flex;gap:8px;align-items:flex-start;margin:6px 0}
.pair img{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:12px;max-width:560px}
"""


def _data_uri(path: Path, size: int = 128) -> str:
    import io

    from PIL import Image

    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _animation_uri(path: Path, size: int = 128, fps: int = 8) -> str:
    """An MP4 clip as a looping animated WebP data URI, each frame thumbnailed to ``size``."""
    import torch
    import torch.nn.functional as F

    from diffalign.data.videos import encode_animation, read_frames

    frames = read_frames(path).float() / 255  # [F, 3, H, W]
    scale = min(1.0, size / max(frames.shape[-2:]))
    if scale < 1:
        frames = F.interpolate(frames, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    frames = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
    return "data:image/webp;base64," + base64.b64encode(encode_animation(frames, fps=fps, format="webp")).decode("ascii")


def _preview(path: Path, video: bool) -> str:
    return _animation_uri(path) if video else _data_uri(path)


def _reward_line(results: dict, index: int) -> str:
    """``label: base → candidate`` for every reward at prompt ``index`` (means over its samples)."""
    parts = []
    for label, arms in results.get("per_prompt", {}).items():
        parts.append(f"{html.escape(label)}: {arms['base'][index]:.4g} → {arms['candidate'][index]:.4g}")
    return "; ".join(parts)


def _interval(d: dict, digits: int = 4) -> str:
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def _metrics_table(results: dict) -> str:
    rows = ["<table id='metrics'><tr><th>metric</th><th>base</th><th>candidate</th><th>gain</th>"
            "<th>win-rate (candidate vs base)</th><th>n prompts / pairs</th></tr>"]
    for label, r in results.get("rewards", {}).items():
        extra = ""
        if "pick_probability" in r:
            extra = f"<br>pick probability {_interval(r['pick_probability'], 3)}"
        rows.append(f"<tr><td class='name'>{html.escape(label)}</td><td>{_interval(r['base'])}</td>"
                    f"<td>{_interval(r['candidate'])}</td><td>{_interval(r['gain'])}</td>"
                    f"<td>{_interval(r['win_rate'], 3)}{extra}</td><td>{r['n_prompts']} / {r['n_pairs']}</td></tr>")
    geneval = results.get("geneval")
    if geneval:
        base, cand = geneval["base"], geneval["candidate"]
        rows.append(f"<tr><td class='name'>{html.escape(geneval['label'])} overall</td><td>{base['overall']:.4f}</td>"
                    f"<td>{cand['overall']:.4f}</td><td>{cand['overall'] - base['overall']:+.4f}</td><td>–</td>"
                    f"<td>{base['n']} images</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _geneval_bars(geneval: dict) -> str:
    parts = [f"<h2>{html.escape(geneval['label'])}: per tag</h2><table id='geneval'>"
             "<tr><th>tag</th><th>base</th><th>candidate</th></tr>"]
    for tag in geneval["base"]["tags"]:
        cells = []
        for arm, css in (("base", "bar"), ("candidate", "bar cand")):
            value = geneval[arm]["tags"].get(tag, 0.0)
            cells.append(f"<td class='bars'><span class='{css}' style='width:{200 * value:.0f}px'></span> {value:.3f}</td>")
        parts.append(f"<tr><td class='name'>{html.escape(tag)}</td>{''.join(cells)}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _grids(results: dict, base_dir: Path, candidate_dir: Path, per_side: int) -> str:
    deltas = results.get("deltas")
    if not deltas:
        return ""
    order = sorted(range(len(deltas["delta"])), key=lambda i: deltas["delta"][i])
    worst, best = order[:per_side], order[::-1][:per_side]
    video = results["generation"].get("frames") is not None
    what = "Videos (animated)" if video else "Images"
    parts = [f"<h2>{what}: base (left) vs candidate (right), by {html.escape(deltas['reward'])} delta</h2>"]
    for title, picks in (("best", best), ("worst", worst)):
        parts.append(f"<h3>{title}</h3>")
        for i in picks:
            arms = []
            for arm, folder in (("base", base_dir), ("candidate", candidate_dir)):
                arms.append("".join(f"<img class='{arm}' alt='{arm} {i}/{k}' "
                                    f"src='{_preview(sample_path(folder, i, k, video), video)}'>"
                                    for k in range(results["generation"]["samples"])))
            rewards = _reward_line(results, i)
            parts.append(f"<figure><div class='pair'><div>{arms[0]}</div><div>{arms[1]}</div></div>"
                         f"<figcaption>#{i} {html.escape(deltas['prompts'][i])} (delta {deltas['delta'][i]:+.4f})"
                         f"{'<br>' + rewards if rewards else ''}</figcaption></figure>")
    return "\n".join(parts)


def write_report(results: dict, path: str | Path, base_dir: Path, candidate_dir: Path, per_side: int = 3) -> Path:
    """Write ``report.html`` for :func:`diffalign.evaluation.run.evaluate`'s ``results``."""
    g = results["generation"]
    settings = (f"{g['samples']} samples per prompt, seed {g['seed']}, {g['steps']} steps, guidance {g['guidance']}, "
                f"resolution {g['height'] or 'default'}×{g['width'] or 'default'}")
    if g.get("frames") is not None:
        settings += f", {g['frames']} frames at {g.get('fps', 16)} fps"
    body = [f"<h1>diffalign evaluation</h1><p>base: <code>{html.escape(results['base']['label'])}</code><br>"
            f"candidate: <code>{html.escape(results['candidate']['label'])}</code><br>{html.escape(settings)}; "
            f"prompts: {html.escape(results['prompts']['source'])} ({results['prompts']['count']})</p>",
            "<h2>Metrics (95 % bootstrap intervals over prompts)</h2>", _metrics_table(results)]
    if results.get("geneval"):
        body.append(_geneval_bars(results["geneval"]))
    body.append(_grids(results, Path(base_dir), Path(candidate_dir), per_side))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>diffalign evaluation</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>")
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
