"""Test-set contamination: which evaluation documents share long n-grams with the training set.

Text is lower-cased and split into words (so whitespace and case do not matter), each word gets a stable 64-bit
hash, and every n-gram (13 words by default, as in GPT-3's analysis) a polynomial rolling hash of its words,
computed for a whole document at once with numpy. The training side is a sorted array of unique n-gram hashes,
so the index costs 8 bytes per distinct n-gram and a lookup is a binary search: no pairwise comparison of
documents. Collisions of 64-bit hashes are negligible at corpus sizes (about n^2 / 2^65).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\w+")
_BASE = np.uint64(0x100000001B3)  # FNV prime: an odd multiplier spreads the rolling hash over all 64 bits


def _word_hashes(text: str, cache: dict[str, int]) -> np.ndarray:
    words = _WORD.findall(text.lower())
    out = np.empty(len(words), dtype=np.uint64)
    for i, word in enumerate(words):
        h = cache.get(word)
        if h is None:
            h = cache[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        out[i] = h
    return out


def ngram_hashes(text: str, n: int, cache: dict[str, int] | None = None) -> np.ndarray:
    """Hashes of the document's word n-grams (uint64, one per position; empty if it has fewer than n words)."""
    words = _word_hashes(text, {} if cache is None else cache)
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    powers = _BASE ** np.arange(n - 1, -1, -1, dtype=np.uint64)  # wraps modulo 2^64, which is the point
    windows = np.lib.stride_tricks.sliding_window_view(words, n)
    with np.errstate(over="ignore"):
        return (windows * powers).sum(axis=1, dtype=np.uint64)


class NgramIndex:
    """The n-grams of a training corpus, added document by document, then frozen for lookups."""

    def __init__(self, n: int = 13) -> None:
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self._chunks: list[np.ndarray] = []
        self._pending = 0
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._words: dict[str, int] = {}

    def add(self, text: str) -> None:
        grams = ngram_hashes(text, self.n, self._words)
        if len(grams):
            self._chunks.append(grams)
            self._pending += len(grams)
        if self._pending > 4_000_000:  # fold into the sorted set now and then, so memory stays ~ distinct n-grams
            self._fold()
        if len(self._words) > 1_000_000:  # the word-hash cache is only a speed-up
            self._words.clear()

    def _fold(self) -> None:
        if self._chunks:
            self._hashes = np.unique(np.concatenate([self._hashes, *self._chunks]))
            self._chunks, self._pending = [], 0

    def __len__(self) -> int:
        self._fold()
        return len(self._hashes)

    def overlap(self, text: str) -> float:
        """Share of the document's n-grams that occur in the index (0 for a document shorter than n words)."""
        self._fold()
        grams = ngram_hashes(text, self.n, self._words)
        if not len(grams) or not len(self._hashes):
            return 0.0
        positions = np.searchsorted(self._hashes, grams).clip(max=len(self._hashes) - 1)
        return float((self._hashes[positions] == grams).mean())


@dataclass(frozen=True)
class Contaminated:
    key: object
    overlap: float  # share of its n-grams found in the training set


def find_contaminated(index: NgramIndex, documents, threshold: float = 0.2) -> list[Contaminated]:
    """Evaluation documents (key, text) whose n-gram overlap with the index is at least `threshold`."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"contamination threshold must be in (0, 1], got {threshold}")
    found = []
    for key, text in documents:
        share = index.overlap(text)
        if share >= threshold:
            found.append(Contaminated(key, share))
    return found
