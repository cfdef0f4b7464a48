"""Exact and near-duplicate documents: normalized-content hashes, then MinHash LSH (datasketch) over word shingles.

Documents are added one at a time, in a fixed order; the first of each cluster is kept and every later member
points at it, so the outcome depends only on the order of the corpus. Candidates from the LSH index are checked
against the threshold with their MinHash Jaccard estimate, which removes most of the index's false positives.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Hashable
from dataclasses import dataclass, field

from datasketch import LeanMinHash, MinHash, MinHashLSH

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Content that differs only in line endings, trailing spaces, surrounding blank lines or Unicode composition
    normalizes to the same string (exact duplicates)."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def content_hash(text: str) -> str:
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


def shingles(text: str, size: int) -> list[bytes]:
    """Lower-cased word `size`-grams (a document shorter than `size` words is one shingle)."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return [" ".join(words).encode("utf-8")] if words else []
    return list(dict.fromkeys(" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)))


@dataclass
class DuplicateCluster:
    kept: Hashable  # the first document of the cluster, in corpus order
    exact: list[Hashable] = field(default_factory=list)  # same normalized content
    near: list[Hashable] = field(default_factory=list)  # estimated Jaccard similarity >= the threshold

    @property
    def size(self) -> int:
        return 1 + len(self.exact) + len(self.near)


NEAR_DUPLICATE_THRESHOLD = 0.8  # Jaccard similarity from which two documents count as one


@functools.lru_cache(maxsize=8)
def _empty_minhash(num_perm: int, seed: int) -> MinHash:
    return MinHash(num_perm=num_perm, seed=seed)  # its copies share the permutations, drawn once per process


def signature(text: str, shingle_size: int = 5, num_perm: int = 128, seed: int = 1) -> LeanMinHash | None:
    """MinHash of a document's shingles (None for a document shorter than one shingle); a pure function of the
    text and the settings, so worker processes can compute it. Lean: the hash values without the permutations,
    a third of the memory per kept document."""
    grams = shingles(text, shingle_size)
    if not grams:
        return None
    minhash = _empty_minhash(num_perm, seed).copy()
    minhash.update_batch(grams)
    return LeanMinHash(minhash)


class Deduplicator:
    """Feed documents with `add`; it says which kept document each one duplicates, if any.

    Defaults follow common practice for web and code corpora: 5-word shingles, 128 permutations, Jaccard 0.8.
    Memory grows with the number of kept documents (one 128-value signature each), not with their length.
    """

    def __init__(self, shingle_size: int = 5, num_perm: int = 128, threshold: float = NEAR_DUPLICATE_THRESHOLD,
                 seed: int = 1) -> None:
        if shingle_size < 1 or num_perm < 16 or not 0.0 < threshold <= 1.0:
            raise ValueError(f"need shingle_size >= 1, num_perm >= 16 and 0 < threshold <= 1; got {shingle_size}, "
                             f"{num_perm}, {threshold}")
        self.shingle_size, self.num_perm, self.threshold, self.seed = shingle_size, num_perm, threshold, seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures: dict[Hashable, LeanMinHash] = {}
        self._by_hash: dict[str, Hashable] = {}
        self._order: dict[Hashable, int] = {}  # kept documents, in corpus order
        self.clusters: dict[Hashable, DuplicateCluster] = {}

    def signature(self, text: str) -> MinHash | None:
        return signature(text, self.shingle_size, self.num_perm, self.seed)

    def add(self, key: Hashable, text: str) -> Hashable | None:
        """None if `key` is kept (new content); otherwise the key of the kept document it duplicates."""
        return self.add_signed(key, content_hash(text), self.signature(text))

    def add_signed(self, key: Hashable, digest: str, minhash: LeanMinHash | None) -> Hashable | None:
        """`add` for a document whose content hash and signature were computed elsewhere (in a worker process)."""
        if digest in self._by_hash:
            kept = self._by_hash[digest]
            self.clusters.setdefault(kept, DuplicateCluster(kept)).exact.append(key)
            return kept
        if minhash is not None:
            candidates = [k for k in self._lsh.query(minhash) if self._signatures[k].jaccard(minhash) >= self.threshold]
            if candidates:
                kept = min(candidates, key=self._order.__getitem__)  # the earliest kept document wins
                self.clusters.setdefault(kept, DuplicateCluster(kept)).near.append(key)
                return kept
            self._lsh.insert(key, minhash)
            self._signatures[key] = minhash
        self._by_hash[digest] = key
        self._order[key] = len(self._order)
        return None

    def duplicate_clusters(self) -> list[DuplicateCluster]:
        """Clusters with at least one duplicate, largest first (ties in corpus order)."""
        return sorted(self.clusters.values(), key=lambda c: (-c.size, self._order[c.kept]))


def jaccard(a: str, b: str, shingle_size: int = 5) -> float:
    """Exact Jaccard similarity of two documents' shingle sets (for tests and reports)."""
    x, y = set(shingles(a, shingle_size)), set(shingles(b, shingle_size))
    return len(x & y) / len(x | y) if x or y else 1.0
