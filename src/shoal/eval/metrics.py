"""The figures of an evaluation report as pure functions of per-token and per-document values, so each one can be
checked by hand: bits per byte, expected calibration error (equal-width and equal-mass bins), reliability bins,
and bootstrap confidence intervals over documents."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)


def bits_per_byte(nats: float, nbytes: int) -> float:
    """Total loss in nats over the UTF-8 bytes of the text it predicts, in bits: comparable across tokenizers."""
    if nbytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return nats / (nbytes * LN2)


@dataclass(frozen=True)
class Bin:
    low: float  # confidence range covered
    high: float
    count: int
    confidence: float  # mean confidence of its predictions (nan when empty)
    accuracy: float  # share of them that were right (nan when empty)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 10, scheme: str = "width") -> list[Bin]:
    """Predictions grouped by confidence: `width` cuts [0, 1] into equal intervals, `mass` sorts the predictions
    and cuts them into groups of (nearly) equal size."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError("confidence and correct must be 1-D arrays of the same length")
    if scheme == "width":
        index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
        groups = [np.flatnonzero(index == b) for b in range(bins)]
        edges = [(b / bins, (b + 1) / bins) for b in range(bins)]
    elif scheme == "mass":
        groups = np.array_split(np.argsort(confidence, kind="stable"), bins)
        edges = [(float(confidence[g].min()), float(confidence[g].max())) if len(g) else (math.nan, math.nan)
                 for g in groups]
    else:
        raise ValueError(f"scheme must be 'width' or 'mass', got {scheme!r}")
    return [Bin(low, high, len(g), float(confidence[g].mean()) if len(g) else math.nan,
                float(correct[g].mean()) if len(g) else math.nan) for (low, high), g in zip(edges, groups)]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10,
                               scheme: str = "width") -> float:
    """sum over bins of (share of predictions in the bin) x |accuracy - mean confidence|."""
    total = len(confidence)
    if total == 0:
        raise ValueError("calibration needs at least one prediction")
    return sum(b.count / total * abs(b.accuracy - b.confidence)
               for b in reliability_bins(confidence, correct, bins, scheme) if b.count)


def bootstrap_ratio_ci(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Confidence interval of sum(numerator) / sum(denominator) when documents are resampled with replacement
    (percentile bootstrap). Per-token means are ratios of per-document sums, so documents stay whole."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    n = len(numerator)
    if n == 0 or n != len(denominator):
        raise ValueError("the bootstrap needs per-document values of equal, non-zero length")
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    ratios = numerator[picks].sum(axis=1) / np.maximum(denominator[picks].sum(axis=1), 1e-300)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)
