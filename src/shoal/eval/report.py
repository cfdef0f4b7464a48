"""`shoal eval`: score a model on held-out documents and write report.json, report.md and reliability.png."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from shoal.eval.metrics import bits_per_byte, bootstrap_ratio_ci, expected_calibration_error, reliability_bins
from shoal.eval.plots import plot_cost, plot_reliability, plot_robustness
from shoal.eval.scoring import Scores
from shoal.io import atomic_write_json, atomic_write_text, ensure_writable_dir

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
    plot_reliability(summary["calibration"]["bins_equal_width"], out_dir / "reliability.png")
    if "robustness" in summary:
        plot_robustness(summary["robustness"], out_dir / "robustness.png")
    if "cost" in summary:
        plot_cost(summary["cost"], out_dir / "cost.png")
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    atomic_write_json(out_dir / "report.json", report)  # last: its presence says the report is complete
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
    if "robustness" in r:
        lines += _robustness_lines(r["robustness"])
    if "efficiency" in r:
        lines += _efficiency_lines(r["efficiency"])
    if "cost" in r:
        lines += _cost_lines(r["cost"])
    return "\n".join(lines)


def _robustness_lines(rob: dict[str, Any]) -> list[str]:
    lines = ["## Robustness", "",
             "Each perturbation against the clean text of the same documents; the interval is a paired 95% "
             "bootstrap of the bits-per-byte change.", "",
             "| perturbation | documents | bits per byte | change | 95% interval | top-1 accuracy | change |",
             "|---|---|---|---|---|---|---|"]
    rows = [*rob["perturbations"].items()] + ([("adversarial (worst per document)", rob["adversarial"])]
                                               if "adversarial" in rob else [])
    for name, p in rows:
        low, high = p["bits_per_byte_degradation_ci95"]
        d = p["degradation"]
        lines.append(f"| {name} | {p['documents']} | {p['perturbed']['bits_per_byte']:.4f} | "
                     f"{d['bits_per_byte']:+.4f} | {low:+.4f} – {high:+.4f} | {p['perturbed']['top1_accuracy']:.2%} | "
                     f"{d['top1_accuracy'] * 100:+.2f} pt |")
    if "worst" in rob:
        lines += ["", f"Worst single perturbation: {rob['worst']}."]
    if "adversarial" in rob:
        chosen = ", ".join(f"{k} {v}" for k, v in sorted(rob["adversarial"]["chosen"].items(), key=lambda kv: -kv[1]))
        lines += [f"The adversary tried every perturbation with {rob['tries']} seeds per document and kept the worst "
                  f"({chosen})."]
    return [*lines, "", "![robustness](robustness.png)", ""]


def _efficiency_lines(e: dict[str, Any]) -> list[str]:
    batches = ", ".join(f"{b}: {t['decode_tokens_per_second']:,.0f}" for b, t in e["throughput"].items())
    prefill = ", ".join(f"{b}: {t['prefill_tokens_per_second']:,.0f}" for b, t in e["throughput"].items())
    return ["## Efficiency", "",
            f"On {e['device']} in {e['dtype']}, prompts of {e['prompt_tokens']} tokens, {e['new_tokens']} new tokens, "
            f"{e['repeats']} repeats:", "",
            f"- prefill latency: p50 {e['prefill_ms']['p50']:.2f} ms, p95 {e['prefill_ms']['p95']:.2f} ms",
            f"- decode latency per token: p50 {e['decode_ms_per_token']['p50']:.2f} ms, p95 "
            f"{e['decode_ms_per_token']['p95']:.2f} ms ({e['decode_tokens_per_second']:,.0f} tokens/s at batch 1)",
            f"- decode tokens/s by batch size: {batches}",
            f"- prefill tokens/s by batch size: {prefill}",
            f"- weights {e['weight_bytes'] / 2**20:.1f} MiB in memory, {e['size_on_disk_bytes'] / 2**20:.1f} MiB on disk; "
            f"KV cache {e['kv_cache_bytes_per_token'] / 1024:.1f} KiB per token; peak memory "
            f"{e['peak_memory_bytes'] / 2**20:,.0f} MiB ({e['peak_memory_kind']})", ""]


def _cost_lines(cost: dict[str, Any]) -> list[str]:
    lines = ["## Cost per million tokens", "",
             f"Prices from {cost['prices']} (edit a copy and pass --prices). The first row is measured; the others "
             "are roofline estimates for serving in bf16.", "",
             f"| hardware | $/hour | decode, batch 1: tokens/s | $/M | decode, batch {cost['batch']}: tokens/s | $/M "
             f"| prefill: tokens/s | $/M | source |", "|---|---|---|---|---|---|---|---|---|"]
    for row in cost["rows"]:
        lines.append(f"| {row['hardware']} | {row['usd_per_hour']:.2f} | "
                     + " | ".join(f"{row[f'{k}_tokens_per_second']:,.0f} | {row[f'{k}_usd_per_million']:.3g}"
                                  for k in ("decode_batch1", "decode_batched", "prefill"))
                     + f" | {row['source']} |")
    return [*lines, "", "![cost per million tokens](cost.png)", ""]
