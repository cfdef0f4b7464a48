"""What `shoal compare` writes: compare.json (every figure), compare.md (the table and the verdict) and compare.png
(each metric's paired difference with its interval against its margin)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shoal.eval.gate import METRICS
from shoal.eval.plots import pyplot
from shoal.io import atomic_write_json, atomic_write_text, ensure_writable_dir
from shoal.train.metrics import save_figure

FORMAT = "shoal.compare/1"


def write_comparison(result: dict[str, Any], candidate: str, baseline: str, data: str, out_dir: str | Path) -> Path:
    out_dir = ensure_writable_dir(out_dir)
    report = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "candidate": candidate,
              "baseline": baseline, "data": data, **result}
    plot_comparison(report, out_dir / "compare.png")
    atomic_write_text(out_dir / "compare.md", render_comparison(report))
    atomic_write_json(out_dir / "compare.json", report)  # last: its presence says the comparison is complete
    return out_dir


def _fmt(name: str, value: float, signed: bool = False) -> str:
    if METRICS[name].percent:
        return f"{value * 100:+.2f} pt" if signed else f"{value:.2%}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def render_comparison(r: dict[str, Any]) -> str:
    level = round(r["level"] * 100)
    lines = [f"# {r['verdict'].upper()}: {r['candidate']} against {r['baseline']}", "",
             f"{r['documents']:,} documents ({r['data']}); paired {level}% bootstrap intervals over documents "
             f"({r['resamples']:,} resamples). Harm is the difference signed so that positive means the candidate is "
             f"worse; a metric regresses when its whole interval is above its margin. Gating: {', '.join(r['fail_on'])}.",
             "", "| metric | baseline | candidate | harm | harm interval | margin | McNemar p | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in r["metrics"].items():
        low, high = m["harm_ci"]
        p = f"{m['mcnemar']['p_value']:.3g}" if "mcnemar" in m else ""
        verdict = f"**{m['verdict']}**" if m["gates"] else f"{m['verdict']} (not gating)"
        lines.append(f"| {METRICS[name].label} | {_fmt(name, m['baseline'])} | {_fmt(name, m['candidate'])} | "
                     f"{_fmt(name, m['harm'], True)} | {_fmt(name, low, True)} – {_fmt(name, high, True)} | "
                     f"{_fmt(name, m['margin'], True)} | {p} | {verdict} |")
    lines += ["", *[f"- {METRICS[name].label}: {m['why']}" for name, m in r["metrics"].items() if m["gates"]]]
    if not r["same_tokenizer"]:
        lines += ["", "The models tokenize differently, so only tokenizer-independent metrics are compared."]
    return "\n".join([*lines, "", "![paired differences](compare.png)", ""])


def plot_comparison(r: dict[str, Any], out_png: Path) -> None:
    """One row per metric: the harm with its interval, the margin as a red tick, scaled by the margin so metrics
    in different units share an axis."""
    plt = pyplot()
    names = list(r["metrics"])
    colors = {"pass": "C2", "regression": "C3", "inconclusive": "C1"}
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(names) + 1.4), dpi=120)
    for row, name in enumerate(names):
        m = r["metrics"][name]
        scale = m["margin"] or 1.0
        low, high = (v / scale for v in m["harm_ci"])
        ax.plot([low, high], [row, row], color=colors[m["verdict"]], linewidth=3)
        ax.plot(m["harm"] / scale, row, "o", color=colors[m["verdict"]])
        ax.plot(1 if m["margin"] else 0, row, "|", color="red", markersize=14)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_yticks(range(len(names)), [METRICS[n].label + ("" if r["metrics"][n]["gates"] else " *") for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("harm / margin (right of the red tick: worse than allowed)")
    ax.set_title(f"{r['verdict']}: candidate vs baseline (* not gating)")
    fig.tight_layout()
    save_figure(fig, out_png)
