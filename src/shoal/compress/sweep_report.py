"""The sweep's report: sweep.json (everything), sweep.md (the table and the recommendations) and pareto.png (quality
against latency and against size, the Pareto front drawn, significant losses in red)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.io import atomic_write_json, atomic_write_text

VERDICTS = {"pass": "within the margin", "regression": "**significant loss**", "inconclusive": "inconclusive"}


def write_sweep(result: dict[str, Any], out: Path) -> None:
    plot_pareto(result, out / "pareto.png")
    atomic_write_text(out / "sweep.md", render_sweep(result))
    atomic_write_json(out / "sweep.json", result)  # last: its presence means the report is complete


def render_sweep(r: dict[str, Any]) -> str:
    lines = [f"# Compression sweep of {r['source']}", "",
             f"{r['documents']} documents ({r['data']}); speed measured on {r['device']}, priced as {r['hardware']} "
             f"(${r['usd_per_hour']}/h); quality gate: bits per byte within {r['max_loss']:.0%} of the original "
             f"({r['margin_bits_per_byte']:.4f}), paired bootstrap over documents.", "",
             f"| variant | parameters | size | memory at batch {r['batch']} | bits/byte | change [95% interval of harm] "
             f"| gate | ECE | ms/token | tokens/s batch {r['batch']} | $/M tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        low, high = v["harm_ci"]
        lines.append(f"| {name} | {v['parameters'] / 1e6:.2f}M | {v['bytes'] / 1e6:.1f} MB | "
                     f"{v['serving_memory_bytes'] / 1e6:.1f} MB | {v['bits_per_byte']:.4f} "
                     f"| {v['bits_per_byte_change_percent']:+.2f}% [{low:+.4f}, {high:+.4f}] | "
                     f"{'—' if name.startswith('original') else VERDICTS[v['verdict']]} | {v['ece']:.4f} | "
                     f"{v['decode_ms_per_token']:.2f} | {v['batched_tokens_per_second']:,.0f} | "
                     f"{v['usd_per_million_batched']:.3f} |")
    lines += ["", "## Recommendations", ""]
    lines += [f"- **{target}**: {rec['summary']}" for target, rec in r["recommendations"].items()]
    lines += [f"- {name} was not built: {why}" for name, why in r["skipped"].items()]
    lines += ["", "![quality against latency and size](pareto.png)", ""]
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(r: dict[str, Any], out_png: Path) -> None:
    from shoal.eval.plots import pyplot
    from shoal.train.metrics import save_figure

    plt = pyplot()
    names = list(r["variants"])
    variants = [r["variants"][n] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120, sharey=True)
    for ax, key, label in ((axes[0], "decode_ms_per_token", "decode latency at batch 1 (ms/token)"),
                           (axes[1], "bytes", "size (MB)")):
        scale = 1e-6 if key == "bytes" else 1.0
        points = [(v[key] * scale, v["bits_per_byte"]) for v in variants]
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="gray", label="Pareto front")
        for (x, y), name, v in zip(points, names, variants):
            color = "C3" if v["verdict"] == "regression" else "C0" if not name.startswith("original") else "black"
            ax.plot(x, y, "o", color=color)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bits per byte (lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle("compression variants: quality against latency and size (red: a significant loss)")
    fig.tight_layout()
    save_figure(fig, out_png)
