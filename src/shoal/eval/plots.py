"""The evaluation report's figures: reliability diagram, robustness degradation and cost per million tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.train.metrics import save_figure


def pyplot():
    """matplotlib without a display (reports are written from servers and CI too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(bins: list[dict[str, Any]], out_png: Path) -> None:
    """Accuracy against confidence per bin, with the share of predictions per bin below."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6), dpi=120, sharex=True, height_ratios=[3, 1])
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    filled = [b for b in bins if b["count"]]
    top.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled], width=width * 0.9,
            edgecolor="black", alpha=0.7, label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "o-", color="C3",
             label="mean confidence → accuracy")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("reliability of the top token's probability")
    total = sum(b["count"] for b in bins) or 1
    bottom.bar(centers, [b["count"] / total for b in bins], width=width * 0.9, color="gray")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    save_figure(fig, out_png)


def plot_robustness(rob: dict[str, Any], out_png: Path) -> None:
    """Bits-per-byte change from clean per perturbation, with its paired interval; the adversary last, in red."""
    plt = pyplot()
    rows = [*rob["perturbations"].items()] + ([("adversarial", rob["adversarial"])] if "adversarial" in rob else [])
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.4), dpi=120)
    for i, (name, p) in enumerate(rows):
        change = p["degradation"]["bits_per_byte"]
        low, high = p["bits_per_byte_degradation_ci95"]
        ax.barh(i, change, color="C3" if name == "adversarial" else "C0", alpha=0.8)
        ax.plot([low, high], [i, i], color="black", linewidth=1.5)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("bits per byte, perturbed minus clean (95% interval)")
    ax.set_title("robustness: bits per byte lost to perturbed text")
    fig.tight_layout()
    save_figure(fig, out_png)


def plot_cost(cost: dict[str, Any], out_png: Path) -> None:
    """$ per million tokens per hardware row, batch-1 decode beside batched decode, on a log scale."""
    plt = pyplot()
    rows = cost["rows"]
    labels = [r["hardware"] + (" (measured)" if r["source"].startswith("measured") else "") for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5), dpi=120)
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["decode_batch1_usd_per_million"] for r in rows], height=0.4, label="decode, batch 1")
    ax.barh([i + 0.2 for i in y], [r["decode_batched_usd_per_million"] for r in rows], height=0.4,
            label=f"decode, batch {cost['batch']}")
    ax.set_xscale("log")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("$ per million generated tokens (log scale)")
    ax.legend(fontsize=8)
    ax.set_title("what a million tokens cost, edge to cloud")
    fig.tight_layout()
    save_figure(fig, out_png)
