"""Data throughput on the default corpus: `shoal data audit` and `shoal data prepare`, and near-duplicate detection
against a straightforward datasketch loop in the same run. Prints JSON.

    python bench/data.py [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from shoal.config import DataConfig
from shoal.data.governance.audit import audit
from shoal.data.governance.dedup import Deduplicator, shingles
from shoal.data.prepare import prepare_dataset
from shoal.data.sources import iter_documents, resolve_sources


def rate(documents: int, nbytes: int, seconds: float) -> dict[str, float]:
    return {"documents": documents, "megabytes": round(nbytes / 1e6, 2), "seconds": round(seconds, 2),
            "documents_per_second": round(documents / seconds, 1), "megabytes_per_second": round(nbytes / 1e6 / seconds, 2)}


def plain_datasketch(texts: list[tuple[str, str]], shingle_size: int, threshold: float) -> tuple[float, set[str]]:
    """The loop most code does: a new MinHash per document (permutations drawn each time), one update per
    shingle, query, insert."""
    start = time.perf_counter()
    lsh, duplicates = MinHashLSH(threshold=threshold, num_perm=128), set()
    for key, text in texts:
        m = MinHash(num_perm=128)
        for shingle in shingles(text, shingle_size):
            m.update(shingle)
        if lsh.query(m):
            duplicates.add(key)
        else:
            lsh.insert(key, m)
    return time.perf_counter() - start, duplicates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="audit worker processes (0: all cores)")
    args = parser.parse_args()
    files = resolve_sources(["stdlib"])
    texts = [(doc.origin, doc.text) for doc in iter_documents(files)]
    nbytes = sum(len(t.encode("utf-8")) for _, t in texts)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = audit(["stdlib"], Path(tmp) / "audit", workers=args.workers, progress=False)
        results["audit"] = {**rate(report["read"]["documents"], report["read"]["bytes"], time.perf_counter() - start),
                            "workers": report["workers"]}
        start = time.perf_counter()
        prepared = prepare_dataset(DataConfig(prepared_dir=str(Path(tmp) / "prepared")), progress=False)
        # Rates over what was read, filtered documents included (prepare reads them before dropping them).
        removed = {reason: r["documents"] for reason, r in prepared.manifest["filters"]["removed"].items()}
        results["prepare"] = {**rate(len(texts), nbytes, time.perf_counter() - start),
                              "filters_removed": removed, "kept_documents": prepared.manifest["documents"]}

    start = time.perf_counter()
    dedup = Deduplicator()
    shoal_duplicates = {key for key, text in texts if dedup.add(key, text) is not None}
    shoal_seconds = time.perf_counter() - start
    plain_seconds, plain_duplicates = plain_datasketch(texts, 5, 0.8)
    results["near_dedup"] = {
        "shoal": rate(len(texts), nbytes, shoal_seconds), "plain_datasketch": rate(len(texts), nbytes, plain_seconds),
        "shoal_vs_plain": round(plain_seconds / shoal_seconds, 2),
        "duplicates": {"shoal": len(shoal_duplicates), "plain_datasketch": len(plain_duplicates),
                       "both": len(shoal_duplicates & plain_duplicates)}}
    print(json.dumps({"benchmark": "data", "corpus": "stdlib", "cores": len(os.sched_getaffinity(0)), **results},
                     indent=2))


if __name__ == "__main__":
    main()
