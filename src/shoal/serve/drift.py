"""Drift monitoring: windows of live prompts compared with the training data's profile.

Four checks per window, each "larger is further from the training data":
- tokens_js: Jensen-Shannon divergence (bits) between the window's token distribution and the training split's;
- tokens_psi: population stability index over ten bins of vocabulary holding equal training mass (rare tokens, and
  tokens never seen in training, land in the last bin);
- length_ks: two-sample Kolmogorov-Smirnov distance between the lengths of the prompts and the reference prompts, in
  half-octave buckets below the prompt cap;
- surprisal: the model's mean per-token loss on the prompts (nats), an out-of-distribution score.

A fixed threshold would mean different things for windows of 10 short prompts and of 500 long ones, so each check is
compared with its null distribution for *this* window: the same statistic on reference pieces drawn to the window's
own prompt lengths (documents resampled first, so a small reference widens the null instead of faking precision;
lengths by permutation). The z-score against that null alarms at `z_alarm`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from shoal.serve.drift_profile import DriftProfile, Pieces

CHECKS = ("tokens_js", "tokens_psi", "length_ks", "surprisal")
PSI_BINS = 10
MIN_PROMPTS = 5  # a partial window is only judged from this many prompts on


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits between distributions on the last axis (0 equal, 1 disjoint)."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log2(p / m), 0.0).sum(-1)
        right = np.where(q > 0, q * np.log2(q / m), 0.0).sum(-1)
    return (left + right) / 2


def psi_bins(frequencies: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Bin of each token: tokens sorted from most to least frequent, cut where the training mass crosses i / bins."""
    order = np.argsort(-frequencies, kind="stable")
    mass_before = np.cumsum(frequencies[order]) - frequencies[order]
    where = np.empty(len(frequencies), dtype=np.int64)
    where[order] = np.minimum((mass_before * bins + 1e-9).astype(np.int64), bins - 1)  # 0.8 summed is 0.7999...
    return where


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """Population stability index between bin shares on the last axis (empty bins floored, as is customary)."""
    e, a = np.maximum(expected, floor), np.maximum(actual, floor)
    return ((a - e) * np.log(a / e)).sum(-1)


def ks_distance(cdf_a: np.ndarray, cdf_b: np.ndarray) -> np.ndarray:
    return np.abs(cdf_a - cdf_b).max(-1)


def _cdf(lengths: np.ndarray, top: int) -> np.ndarray:
    """Empirical CDFs over 0..top of each row of integer lengths [rows, n] (one bincount for all rows)."""
    rows, n = lengths.shape
    offsets = np.arange(rows)[:, None] * (top + 1)
    counts = np.bincount((lengths + offsets).ravel(), minlength=rows * (top + 1)).reshape(rows, top + 1)
    return np.cumsum(counts, -1) / n


def length_buckets(lengths: np.ndarray, cap: int) -> np.ndarray:
    """Half-octave buckets counted down from the prompt cap (the top one holds lengths from cap / sqrt(2) to cap), so
    that a token or two either way, as re-tokenizing text gives, does not move a prompt out of its bucket."""
    below = np.floor(2 * np.log2(cap / np.maximum(lengths, 1))).astype(np.int64)
    return n_buckets(cap) - 1 - np.clip(below, 0, n_buckets(cap) - 1)


def n_buckets(cap: int) -> int:
    return int(np.floor(2 * np.log2(max(cap, 1)))) + 1


def draw_pieces(pieces: Pieces, wanted: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, len(wanted)] piece indices: for each, documents are resampled with replacement, then each wanted
    length gets a random piece of those documents at least that long (or the longest there is)."""
    order = np.argsort(pieces.lengths, kind="stable")
    sorted_lengths = pieces.lengths[order]
    first = np.searchsorted(sorted_lengths, np.minimum(wanted, sorted_lengths[-1]), side="left")
    picks = np.empty((resamples, len(wanted)), dtype=np.int64)
    uniform = np.full(pieces.n_documents, 1 / pieces.n_documents)
    for b in range(resamples):
        # A document drawn k times weighs k; the tiny floor keeps a length servable when no drawn document has it.
        weights = rng.multinomial(pieces.n_documents, uniform)[pieces.documents[order]] + 1e-9
        cumulative = np.cumsum(weights)
        before = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
        targets = before + rng.random(len(wanted)) * (cumulative[-1] - before)
        picks[b] = order[np.minimum(np.searchsorted(cumulative, targets, side="right"), len(order) - 1)]
    return picks


class WindowJudge:
    """Statistics of a window of prompts against their null distributions from a profile."""

    def __init__(self, profile: DriftProfile, resamples: int = 200, z_alarm: float = 4.0) -> None:
        self.profile, self.resamples, self.z_alarm = profile, resamples, z_alarm
        self.bins = psi_bins(profile.frequencies)
        self.bin_shares = np.bincount(self.bins, weights=profile.frequencies, minlength=PSI_BINS)
        self.top = n_buckets(profile.max_prompt) - 1
        self.reference_buckets = length_buckets(profile.pieces.lengths, profile.max_prompt)
        self.reference_cdf = _cdf(self.reference_buckets[None], self.top)[0]

    def judge(self, prompts: list[np.ndarray], nats: list[float], rng: np.random.Generator) -> dict[str, Any]:
        p = self.profile
        lengths = np.array([min(len(x), p.max_prompt) for x in prompts], dtype=np.int64)
        tokens = np.concatenate([x[:p.max_prompt] for x in prompts])
        predicted = int(np.maximum(lengths - 1, 0).sum())
        observed = {"tokens_js": float(js_divergence(p.frequencies, self._shares(tokens))),
                    "tokens_psi": float(psi(self.bin_shares, self._bin_shares(tokens))),
                    "length_ks": float(ks_distance(_cdf(length_buckets(lengths, p.max_prompt)[None], self.top)[0],
                                                   self.reference_cdf))}
        if predicted:
            observed["surprisal"] = float(sum(nats) / predicted)
        null = self._null(lengths, rng)
        checks = {}
        for name, value in observed.items():
            mean, std = float(null[name].mean()), float(null[name].std())
            # A null without spread (every resample alike): rounding must not read as an alarm.
            z = (value - mean) / max(std, 1e-9 * max(1.0, abs(mean)))
            checks[name] = {"value": value, "expected": mean, "null_std": std, "z": z,
                            "p": float((1 + (null[name] >= value).sum()) / (1 + len(null[name]))),
                            "alarm": bool(z >= self.z_alarm)}
        alarms = [name for name in CHECKS if checks.get(name, {}).get("alarm")]
        return {"prompts": len(prompts), "tokens": int(len(tokens)), "checks": checks, "alarm": bool(alarms),
                "alarms": alarms}

    def _shares(self, tokens: np.ndarray) -> np.ndarray:
        return np.bincount(tokens, minlength=self.profile.vocab_size)[:self.profile.vocab_size] / max(len(tokens), 1)

    def _bin_shares(self, tokens: np.ndarray) -> np.ndarray:
        return np.bincount(self.bins[tokens], minlength=PSI_BINS) / max(len(tokens), 1)

    def _null(self, lengths: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p, B = self.profile, self.resamples
        js, psis = np.empty(B), np.empty(B)
        width = np.arange(p.max_prompt)
        picks = draw_pieces(p.pieces, lengths, B, rng)
        for b in range(B):
            rows = picks[b]
            keep = width[None] < np.minimum(lengths, p.pieces.lengths[rows])[:, None]
            tokens = p.pieces.values[rows][keep]
            js[b] = js_divergence(p.frequencies, self._shares(tokens))
            psis[b] = psi(self.bin_shares, self._bin_shares(tokens))
        null = {"tokens_js": js, "tokens_psi": psis}
        # Lengths: a permutation test of the window against the reference prompts.
        pooled = np.concatenate([length_buckets(lengths, p.max_prompt), self.reference_buckets])
        shuffled = np.stack([rng.permutation(pooled) for _ in range(B)])
        null["length_ks"] = ks_distance(_cdf(shuffled[:, :len(lengths)], self.top),
                                        _cdf(shuffled[:, len(lengths):], self.top))
        scored = p.scored
        rows = draw_pieces(scored, lengths, B, rng)
        used = np.minimum(lengths[None], scored.lengths[rows])  # tokens of each drawn piece standing in for a prompt
        sums = np.where(used >= 2, scored.values[rows, np.maximum(used - 2, 0)], 0.0)
        null["surprisal"] = sums.sum(1) / np.maximum(np.maximum(used - 1, 0).sum(1), 1)
        return null


class DriftMonitor:
    """Collects prompts as they are prefilled and judges them in windows of `window` prompts, in a background thread
    (the engine thread only appends). Keeps the last `keep` windows' results for /v1/drift and `shoal monitor`."""

    def __init__(self, profile: DriftProfile, window: int = 100, z_alarm: float = 4.0, resamples: int = 200,
                 keep: int = 1000, seed: int = 0) -> None:
        self.judge = WindowJudge(profile, resamples, z_alarm)
        self.profile, self.window, self.seed = profile, window, seed
        self._lock = threading.Lock()
        self._prompts: list[np.ndarray] = []
        self._nats: list[float] = []
        self._opened = time.time()
        self._closed = self._judged = 0
        self._history: deque[dict[str, Any]] = deque(maxlen=keep)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="shoal-drift")
        self._current: tuple[tuple[int, int], dict[str, Any]] | None = None  # the filling window, last judged

    def observe(self, prompt: list[int], nats: float) -> None:
        """One prefilled prompt and its total surprisal (nats over its tokens after the first)."""
        with self._lock:
            self._prompts.append(np.asarray(prompt, dtype=np.int64))
            self._nats.append(nats)
            if len(self._prompts) < self.window:
                return
            prompts, nats_, opened = self._prompts, self._nats, self._opened
            self._prompts, self._nats, self._opened = [], [], time.time()
            index, self._closed = self._closed, self._closed + 1
        self._worker.submit(self._judge_window, prompts, nats_, opened, index)

    def _judge_window(self, prompts: list[np.ndarray], nats: list[float], opened: float, index: int) -> None:
        result = self.judge.judge(prompts, nats, np.random.default_rng([self.seed, index]))
        with self._lock:
            self._history.append({"window": index, "start": opened, "end": time.time(), **result})
            self._judged += 1

    def settle(self) -> None:
        """Wait until every closed window has been judged."""
        self._worker.submit(lambda: None).result()

    @property
    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self._history[-1] if self._history else None

    def report(self) -> dict[str, Any]:
        with self._lock:
            prompts, nats, opened, history = list(self._prompts), list(self._nats), self._opened, list(self._history)
            key = (self._closed, len(prompts))
        current = None
        if len(prompts) >= MIN_PROMPTS:
            # Judged again only when prompts arrived since: scrapers and dashboards may ask often.
            if self._current is None or self._current[0] != key:
                rng = np.random.default_rng([self.seed, 1 << 32, key[0]])  # apart from the closed windows' seeds
                self._current = (key, {"start": opened, **self.judge.judge(prompts, nats, rng)})
            current = self._current[1]
        return {"reference": self.profile.describe(), "window": self.window, "z_alarm": self.judge.z_alarm,
                "resamples": self.judge.resamples, "windows_judged": self._judged,
                "alarm": bool(history and history[-1]["alarm"]), "current": current,
                "current_prompts": len(prompts), "history": history}

    @property
    def windows_judged(self) -> int:
        return self._judged

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def register_drift_gauges(registry: CollectorRegistry, monitor: Callable[[], DriftMonitor | None]) -> None:
    """Gauges of the last window judged by `monitor()` (the serving backend's, which a swap changes)."""
    def latest() -> dict[str, Any] | None:
        current = monitor()
        return current.latest if current is not None else None

    def reading(check: str, key: str):
        def read() -> float:
            window = latest()
            item = window["checks"].get(check) if window else None
            return float(item[key]) if item else float("nan")
        return read

    value = Gauge("shoal_drift_value", "Drift statistic of the last judged window", ["check"], registry=registry)
    z = Gauge("shoal_drift_z", "Drift z-score of the last judged window against its null", ["check"],
              registry=registry)
    for check in CHECKS:
        value.labels(check).set_function(reading(check, "value"))
        z.labels(check).set_function(reading(check, "z"))
    Gauge("shoal_drift_alarm", "1 when the last judged window drifted", registry=registry).set_function(
        lambda: float(bool((latest() or {}).get("alarm"))))
    Gauge("shoal_drift_windows", "Windows judged so far", registry=registry).set_function(
        lambda: float(getattr(monitor(), "windows_judged", 0)))
