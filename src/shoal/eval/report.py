"""`shoal eval`: score a model on held-out documents and write report.json, report.md and reliability.png."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from shoal.eval.metrics import bits_per_byte, bootstrap_ratio_ci, expected_calibration_error, reliability_bins
from shoal.eval.scoring import Scores
from shoal.io import atomic_write_json, atomic_write_text, ensure_writable_dir
from shoal.train.metrics import save_figure

FORMAT = "shoal.eval/1"


def summarize(scores: Scores, resamples: int = 1000) -> dict[str, Any]:
    """Aggregate figures with 95% bootstrap intervals over documents, calibration, and the per-document values."""
    nats, tokens, nbytes = scores.array("nats"), scores.array("tokens"), scores.array("bytes")
    top1, top5 = scores.array("top1"), scores.array("top5")
    confidence, correct = np.concatenate(scores.confidence), np.concatenate(scores.correct)
    loss = nats.sum() / tokens.sum()
    loss_ci = bootstrap_ratio_ci(nats, tokens, resamples)
    bpb_ci = bootstrap_ratio_ci(nats / math.log(2), nbytes, resamples)
    quality = {
        "loss": {"value": loss, "ci95": loss_ci},
        "perplexity": {"value": math.exp(loss), "ci95": [math.exp(v) for v in loss_ci]},
        "bits_per_byte": {"value": bits_per_byte(nats.sum(), int(nbytes.sum())), "ci95": bpb_ci},
        "top1_accuracy": {"value": top1.sum() / tokens.sum(), "ci95": bootstrap_ratio_ci(top1, tokens, resamples)},
        "top5_accuracy": {"value": top5.sum() / tokens.sum(), "ci95": bootstrap_ratio_ci(top5, tokens, resamples)},
    }
    calibration = {"ece_equal_width": expected_calibration_error(confidence, correct, 10, "width"),
                   "ece_equal_mass": expected_calibration_error(confidence, correct, 10, "mass"),
                   "brier": scores.array("brier").sum() / tokens.sum(),
                   "bins_equal_width": [vars(b) for b in reliability_bins(confidence, correct, 10, "width")]}
    return {"documents": len(scores.names), "tokens": int(tokens.sum()), "bytes": int(nbytes.sum()),
            "quality": quality, "calibration": calibration,
            "per_document": {"names": scores.names, "nats": nats.tolist(), "tokens": tokens.astype(int).tolist(),
                             "bytes": nbytes.astype(int).tolist(), "top1": top1.astype(int).tolist(),
                             "top5": top5.astype(int).tolist()}}


def write_report(summary: dict[str, Any], model_info: dict[str, Any], data: str, out_dir: str | Path) -> Path:
    out_dir = ensure_writable_dir(out_dir)
    report = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model_info, "data": data,
              **summary}
    atomic_write_json(out_dir / "report.json", report)
    plot_reliability(summary["calibration"]["bins_equal_width"], out_dir / "reliability.png")
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    return out_dir


def render_markdown(r: dict[str, Any]) -> str:
    q, c = r["quality"], r["calibration"]

    def row(name: str, key: str, fmt: str) -> str:
        low, high = q[key]["ci95"]
        return f"| {name} | {q[key]['value']:{fmt}} | {low:{fmt}} – {high:{fmt}} |"

    lines = [f"# Evaluation of {r['model'].get('source', 'the model')}", "",
             f"{r['documents']:,} documents, {r['tokens']:,} tokens, {r['bytes'] / 1e6:.2f} MB ({r['data']}); "
             "intervals are 95% bootstrap over documents.", "",
             "| metric | value | 95% interval |", "|---|---|---|",
             row("loss (nats/token)", "loss", ".4f"), row("perplexity", "perplexity", ".2f"),
             row("bits per byte", "bits_per_byte", ".4f"), row("top-1 accuracy", "top1_accuracy", ".2%"),
             row("top-5 accuracy", "top5_accuracy", ".2%"), "",
             "## Calibration", "",
             f"Expected calibration error of the top token's probability: {c['ece_equal_width']:.4f} "
             f"(10 equal-width bins), {c['ece_equal_mass']:.4f} (10 equal-mass bins); Brier score "
             f"{c['brier']:.4f}.", "", "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def plot_reliability(bins: list[dict[str, Any]], out_png: Path) -> None:
    """Accuracy against confidence per bin, with the share of predictions per bin below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
