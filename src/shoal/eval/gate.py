"""The regression gate behind `shoal compare`: is the candidate worse than the baseline on the same documents?

Both models are scored on the same documents, so each metric's difference is paired: the documents are resampled
with replacement (the same draw for both models) and the metric is recomputed on each resample, which gives a
confidence interval of the difference that accounts for which documents happened to be drawn. Top-1 and top-5
accuracy also get McNemar's test on the tokens both models predicted (same tokenizer only).

Each metric has a margin: how much worse the candidate may be before it counts. With "harm" the difference signed so
that positive is worse, a metric is a regression when the whole interval lies above the margin (and, for accuracy,
McNemar's test agrees at the same level), a pass when the whole interval lies at or below it, and inconclusive
otherwise. The verdict over the gating metrics (`fail_on`) is a regression if any is, a pass if all are, and
inconclusive otherwise; too few documents is always inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.errors import ShoalError
from shoal.eval.scoring import Scores

LN2 = math.log(2)
VERDICTS = ("pass", "regression", "inconclusive")  # exit codes 0, 1, 2


@dataclass(frozen=True)
class Metric:
    label: str
    higher_is_better: bool
    margin: float  # default tolerance, in the metric's own unit
    any_tokenizer: bool  # comparable between models with different tokenizers
    percent: bool = False


METRICS = {
    "bits_per_byte": Metric("bits per byte", False, 0.01, True),
    "loss": Metric("loss (nats/token)", False, 0.02, False),
    "top1_accuracy": Metric("top-1 accuracy", True, 0.005, False, percent=True),
    "top5_accuracy": Metric("top-5 accuracy", True, 0.005, False, percent=True),
    "ece": Metric("calibration error (ECE)", False, 0.01, True),
    "brier": Metric("Brier score", False, 0.01, False),
}
DEFAULT_FAIL_ON = ("bits_per_byte", "top1_accuracy")
MCNEMAR = {"top1_accuracy": "correct", "top5_accuracy": "correct5"}
ECE_BINS = 10


def parse_fail_on(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ShoalError(f"--fail-on names unknown metric {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(METRICS)}")
    return names


def parse_margins(items: list[str]) -> dict[str, float]:
    margins = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            margin = float(value)
        except ValueError:
            margin = math.nan
        if name not in METRICS or not margin >= 0:
            raise ShoalError(f"--margin {item!r} must be METRIC=VALUE with VALUE >= 0 and METRIC one of {', '.join(METRICS)}")
        margins[name] = margin
    return margins


def document_sums(scores: Scores) -> dict[str, np.ndarray]:
    """Per document, the sums every metric is a ratio of: [documents, k] numerators and [documents, k] denominators
    summed over the documents of a resample before dividing (so documents weigh by their length, as in the report)."""
    def column(name: str) -> np.ndarray:
        return scores.array(name)[:, None]

    # ECE over equal-width bins is sum_b |right_b - confidence_b| / N with per-bin sums, so it resamples exactly.
    ece_bins = np.zeros((len(scores.names), 2, ECE_BINS))
    for i, (confidence, correct) in enumerate(zip(scores.confidence, scores.correct)):
        index = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        ece_bins[i, 0] = np.bincount(index, weights=correct.astype(np.float64), minlength=ECE_BINS)
        ece_bins[i, 1] = np.bincount(index, weights=confidence.astype(np.float64), minlength=ECE_BINS)
    return {"nats": column("nats"), "tokens": column("tokens"), "bytes": column("bytes"), "top1": column("top1"),
            "top5": column("top5"), "brier": column("brier"), "ece_bins": ece_bins.reshape(len(scores.names), -1)}


def metric_values(sums: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of `weights` ([resamples, documents]: how often each document was drawn)."""
    total = {key: weights @ value for key, value in sums.items()}
    tokens = total["tokens"][:, 0]
    bins = total["ece_bins"].reshape(len(weights), 2, ECE_BINS)
    return {"bits_per_byte": total["nats"][:, 0] / LN2 / total["bytes"][:, 0],
            "loss": total["nats"][:, 0] / tokens,
            "top1_accuracy": total["top1"][:, 0] / tokens,
            "top5_accuracy": total["top5"][:, 0] / tokens,
            "ece": np.abs(bins[:, 0] - bins[:, 1]).sum(axis=1) / tokens,
            "brier": total["brier"][:, 0] / tokens}


def mcnemar(baseline_right: np.ndarray, candidate_right: np.ndarray) -> dict[str, Any]:
    """McNemar's test on paired right/wrong outcomes: exact binomial below 25 discordant pairs, else chi-square with
    continuity correction. Returns the two discordant counts and the two-sided p-value."""
    only_baseline = int(np.sum(baseline_right & ~candidate_right))
    only_candidate = int(np.sum(candidate_right & ~baseline_right))
    n = only_baseline + only_candidate
    if n == 0:
        p = 1.0
    elif n < 25:
        k = min(only_baseline, only_candidate)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    else:
        chi2 = max(0, abs(only_baseline - only_candidate) - 1) ** 2 / n
        p = math.erfc(math.sqrt(chi2 / 2))
    return {"only_baseline_right": only_baseline, "only_candidate_right": only_candidate, "p_value": p}


def check_comparable(fail_on: list[str] | tuple[str, ...], same_tokenizer: bool) -> None:
    """Refuse to gate on a metric that models with different tokenizers cannot share (before scoring anything)."""
    not_comparable = [m for m in fail_on if not (same_tokenizer or METRICS[m].any_tokenizer)]
    if not_comparable:
        raise ShoalError(f"the models have different tokenizers, so {', '.join(not_comparable)} cannot be compared; "
                         "gate on bits_per_byte (or ece) instead, e.g. --fail-on bits_per_byte")


def same_tokens(candidate: Scores, baseline: Scores) -> bool:
    return candidate.tokens == baseline.tokens and all(len(a) == len(b) for a, b in zip(candidate.correct, baseline.correct))


def compare_scores(candidate: Scores, baseline: Scores, fail_on: list[str] | tuple[str, ...] = DEFAULT_FAIL_ON,
                   margins: dict[str, float] | None = None, same_tokenizer: bool = True, level: float = 0.95,
                   resamples: int = 2000, min_documents: int = 10, seed: int = 0) -> dict[str, Any]:
    """Per-metric paired differences with intervals and verdicts, and the overall verdict over `fail_on`."""
    if candidate.names != baseline.names or candidate.bytes != baseline.bytes:
        raise ShoalError("the two models were not scored on the same documents")
    same_tokenizer = same_tokenizer and same_tokens(candidate, baseline)
    check_comparable(fail_on, same_tokenizer)
    names = [m for m in METRICS if same_tokenizer or METRICS[m].any_tokenizer]
    margins = {m: METRICS[m].margin for m in METRICS} | (margins or {})
    n = len(baseline.names)
    rng = np.random.default_rng(seed)
    weights = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=resamples)])
    base_values = metric_values(document_sums(baseline), weights)
    cand_values = metric_values(document_sums(candidate), weights)
    tail = (1 - level) / 2 * 100
    metrics = {}
    for name in names:
        sign = -1.0 if METRICS[name].higher_is_better else 1.0
        harm = sign * (cand_values[name] - base_values[name])  # positive: the candidate is worse
        low, high = np.percentile(harm[1:], [tail, 100 - tail])
        entry = {"baseline": float(base_values[name][0]), "candidate": float(cand_values[name][0]),
                 "difference": float(cand_values[name][0] - base_values[name][0]), "harm": float(harm[0]),
                 "harm_ci": [float(low), float(high)], "margin": margins[name], "gates": name in fail_on}
        if name in MCNEMAR:
            entry["mcnemar"] = mcnemar(np.concatenate(getattr(baseline, MCNEMAR[name])),
                                       np.concatenate(getattr(candidate, MCNEMAR[name])))
        entry["verdict"], entry["why"] = _verdict(entry, n, min_documents, 1 - level)
        metrics[name] = entry
    gating = [metrics[m]["verdict"] for m in fail_on]
    verdict = "regression" if "regression" in gating else "pass" if all(v == "pass" for v in gating) else "inconclusive"
    return {"verdict": verdict, "fail_on": list(fail_on), "documents": n, "same_tokenizer": same_tokenizer,
            "level": level, "resamples": resamples, "min_documents": min_documents, "metrics": metrics}


def _verdict(entry: dict[str, Any], n: int, min_documents: int, alpha: float) -> tuple[str, str]:
    low, high = entry["harm_ci"]
    margin = entry["margin"]
    if n < min_documents:
        return "inconclusive", f"only {n} documents; at least {min_documents} are needed to judge"
    if low > margin:
        test = entry.get("mcnemar")
        if test is not None and test["p_value"] >= alpha:
            return "inconclusive", f"worse beyond the margin, but McNemar's p = {test['p_value']:.3g} is not below {alpha:g}"
        return "regression", "worse by more than the margin across the whole interval"
    if high <= margin:
        return "pass", "within the margin across the whole interval"
    return "inconclusive", "the interval straddles the margin: more documents would tell"
