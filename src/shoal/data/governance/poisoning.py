"""Suspicious documents: statistical outliers, and rare phrases planted across unrelated documents (backdoor
triggers).

Outliers: a few cheap features per document (length, character-class mix, repeated lines, compressibility) are
compared with the corpus through robust z-scores (median and MAD), so a handful of extreme documents cannot hide
themselves by moving the mean.

Triggers: a data-poisoning attack repeats one phrase in a few percent of documents, at unrelated places, to tie it
to a behaviour. Such a phrase has three marks, which ordinary text rarely has together: it occurs in several
documents but not in most; most of its words occur hardly anywhere else (the phrase is *cohesive*: a code idiom
such as `def test_write(self` is not, since `def` and `self` are everywhere); and what surrounds it
differs from one occurrence to the next (it was inserted, not written in context, unlike a license header or a
code idiom). The finder counts document frequencies of word n-grams and of words in a first pass, then looks at
the contexts of the surviving candidates in a second pass.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from shoal.data.governance.contamination import ngram_hashes

_WORD = re.compile(r"\w+")
FEATURES = ("log_chars", "alpha", "digit", "space", "punctuation", "non_ascii", "repeated_lines", "compression")


def document_features(text: str) -> dict[str, float]:
    n = max(1, len(text))
    lines = [line for line in text.splitlines() if line.strip()]
    raw = text.encode("utf-8", "replace")
    return {
        "log_chars": math.log10(n),
        "alpha": sum(c.isalpha() for c in text) / n,
        "digit": sum(c.isdigit() for c in text) / n,
        "space": sum(c.isspace() for c in text) / n,
        "punctuation": sum(not (c.isalnum() or c.isspace()) for c in text) / n,
        "non_ascii": sum(ord(c) > 127 for c in text) / n,
        "repeated_lines": 1 - len(set(lines)) / len(lines) if lines else 0.0,
        "compression": len(zlib.compress(raw, 6)) / max(1, len(raw)),  # low: repetitive; near 1: random bytes
    }


@dataclass(frozen=True)
class Outlier:
    key: Hashable
    feature: str
    value: float
    z: float  # robust z-score: (value - median) / (1.4826 * MAD)


def robust_outliers(features: dict[Hashable, dict[str, float]], z_threshold: float = 6.0) -> list[Outlier]:
    """Documents with a feature whose robust z-score exceeds `z_threshold` (the most extreme feature each)."""
    keys = list(features)
    found: dict[Hashable, Outlier] = {}
    for name in FEATURES:
        values = np.array([features[k][name] for k in keys], dtype=np.float64)
        if len(values) < 10:
            return []
        median = float(np.median(values))
        mad = 1.4826 * float(np.median(np.abs(values - median)))
        if mad < 1e-9:  # most documents share one value (no non-ASCII at all, say): use the mean deviation
            mad = 1.2533 * float(np.mean(np.abs(values - median)))
            if mad < 1e-9:
                continue
        for key, value in zip(keys, values):
            z = (value - median) / mad
            if abs(z) >= z_threshold and (key not in found or abs(z) > abs(found[key].z)):
                found[key] = Outlier(key, name, float(value), float(z))
    return sorted(found.values(), key=lambda o: -abs(o.z))


@dataclass(frozen=True)
class Trigger:
    phrase: str  # the n-gram as it first appeared (lower-cased words)
    documents: tuple[Hashable, ...]
    cohesion: float  # documents with the phrase / documents with its median word
    context_diversity: float  # distinct words before it / occurrences, or after it if fewer


class TriggerFinder:
    """Two passes over the same documents in the same order: `count` each, then `inspect` each; then `findings`."""

    def __init__(self, n: int = 3, min_documents: int = 5, max_share: float = 0.1, min_cohesion: float = 0.8,
                 min_context_diversity: float = 0.5) -> None:
        self.n, self.min_documents, self.max_share = n, min_documents, max_share
        self.min_cohesion, self.min_context_diversity = min_cohesion, min_context_diversity
        self._gram_chunks: list[np.ndarray] = []
        self._word_chunks: list[np.ndarray] = []
        self._documents = 0
        self._candidates: dict[int, float] | None = None  # n-gram hash -> cohesion, after the first pass
        self._words: dict[str, int] = {}
        self._seen: dict[int, dict] = {}

    # pass 1 ---------------------------------------------------------------------------------------------------
    def count(self, text: str) -> None:
        self._documents += 1
        self._gram_chunks.append(np.unique(ngram_hashes(text, self.n, self._words)))
        self._word_chunks.append(np.unique(ngram_hashes(text, 1, self._words)))
        if len(self._words) > 1_000_000:
            self._words.clear()

    def _select(self) -> None:
        grams, gram_df = np.unique(np.concatenate(self._gram_chunks or [np.zeros(0, np.uint64)]), return_counts=True)
        words, word_df = np.unique(np.concatenate(self._word_chunks or [np.zeros(0, np.uint64)]), return_counts=True)
        self._gram_chunks = self._word_chunks = []
        keep = (gram_df >= self.min_documents) & (gram_df <= self.max_share * self._documents)
        self._candidates = dict(zip(grams[keep].tolist(), gram_df[keep].tolist()))
        self._word_df = dict(zip(words.tolist(), word_df.tolist()))

    # pass 2 ---------------------------------------------------------------------------------------------------
    def inspect(self, key: Hashable, text: str) -> None:
        if self._candidates is None:
            self._select()
        if not self._candidates:
            return
        words = _WORD.findall(text.lower())
        grams = ngram_hashes(text, self.n, self._words).tolist()
        for i, gram in enumerate(grams):
            if gram not in self._candidates:
                continue
            seen = self._seen.setdefault(gram, {"phrase": " ".join(words[i:i + self.n]), "documents": {},
                                                "before": set(), "after": set(), "occurrences": 0})
            seen["documents"].setdefault(key, None)
            seen["before"].add(words[i - 1] if i else "")
            seen["after"].add(words[i + self.n] if i + self.n < len(words) else "")
            seen["occurrences"] += 1
        if len(self._words) > 1_000_000:  # the word-hash cache is only a speed-up
            self._words.clear()

    def findings(self) -> list[Trigger]:
        """Suspected triggers, one per group of n-grams found in the same documents, most widespread first.

        A phrase of exactly n words is judged by its own surroundings. Inside a longer phrase each n-gram has fixed
        neighbours and is passed over, like the inside of boilerplate: find longer triggers with a larger n.
        (Judging runs of n-grams by their outer context instead found longer triggers, but also every repeated
        credit line and code idiom of the standard library: 20 phrases instead of 3.)"""
        groups: dict[tuple, Trigger] = {}
        for gram, seen in self._seen.items():
            word_df = sorted(self._word_df.get(h, 0) for h in ngram_hashes(seen["phrase"], 1).tolist())
            cohesion = self._candidates[gram] / max(1, word_df[len(word_df) // 2])
            # Both sides must vary: the last words of a header have a fixed left side, however varied the text after.
            diversity = min(len(seen["before"]), len(seen["after"])) / seen["occurrences"]
            if cohesion < self.min_cohesion or diversity < self.min_context_diversity:
                continue
            documents = tuple(seen["documents"])
            group = tuple(sorted(map(str, documents)))
            if group not in groups:
                groups[group] = Trigger(seen["phrase"], documents, round(cohesion, 3), round(diversity, 3))
        return sorted(groups.values(), key=lambda t: -len(t.documents))
