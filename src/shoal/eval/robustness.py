"""Robustness: the report's figures under each perturbation, as degradation from the clean documents, and an
adversarial search that keeps, per document, the perturbed version the model handles worst.

Degradation is paired: each perturbation is compared with the clean scores of the same documents (the ones it
applies to), with a bootstrap interval over documents. The adversary is a random search: every perturbation with
`tries` different seeds (same edit budget, different places) is scored, and for each document the candidate with
the highest bits per byte wins. Bits per byte is the yardstick because a perturbation changes the text's length in
tokens but barely in bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from shoal.eval.gate import document_sums, metric_values
from shoal.eval.perturb import PERTURBATIONS, perturb
from shoal.eval.scoring import Scores

REPORTED = ("bits_per_byte", "loss", "top1_accuracy", "ece")

ScoreFn = Callable[[list[tuple[str, str]], str], Scores]  # (documents, what is being scored) -> Scores


def evaluate_robustness(score: ScoreFn, documents: list[tuple[str, str]], clean: Scores, tries: int = 2,
                        resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`score` turns (name, text) documents into Scores with the model under test (its second argument names the
    pass, for progress); `clean` is its score of `documents` as they are."""
    per_kind: dict[str, dict[str, Any]] = {}
    candidates: dict[int, list[tuple[str, Scores, int]]] = {i: [] for i in range(len(documents))}
    for kind in PERTURBATIONS:
        for attempt in range(tries):
            texts = {i: perturb(text, kind, seed + attempt, i) for i, (_, text) in enumerate(documents)}
            applied = [i for i, text in texts.items() if text is not None]
            if not applied:
                break
            scores = score([(documents[i][0], texts[i]) for i in applied], f"{kind} {attempt + 1}/{tries}")
            for row, i in enumerate(applied):
                candidates[i].append((kind, scores, row))
            if attempt == 0:  # the first seed is the report's typical case of this perturbation
                per_kind[kind] = _paired(select(clean, applied), scores, resamples, seed)
    result: dict[str, Any] = {"tries": tries, "perturbations": per_kind}
    if per_kind:
        result["worst"] = max(per_kind, key=lambda k: per_kind[k]["degradation"]["bits_per_byte"])
    attacked = [i for i in range(len(documents)) if candidates[i]]
    if attacked:
        picks = [max(candidates[i], key=lambda c: _bits_per_byte(c[1], c[2])) for i in attacked]
        adversarial = merge([(scores, row) for _, scores, row in picks])
        result["adversarial"] = _paired(select(clean, attacked), adversarial, resamples, seed)
        result["adversarial"]["chosen"] = dict(Counter(kind for kind, _, _ in picks))
    return result


def _bits_per_byte(scores: Scores, row: int) -> float:
    return scores.nats[row] / np.log(2) / scores.bytes[row]


def _paired(clean: Scores, perturbed: Scores, resamples: int, seed: int) -> dict[str, Any]:
    n = len(clean.names)
    weights = np.vstack([np.ones(n), np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)])
    before, after = metric_values(document_sums(clean), weights), metric_values(document_sums(perturbed), weights)
    bpb_change = after["bits_per_byte"][1:] - before["bits_per_byte"][1:]
    return {"documents": n,
            "clean": {m: float(before[m][0]) for m in REPORTED},
            "perturbed": {m: float(after[m][0]) for m in REPORTED},
            "degradation": {m: float(after[m][0] - before[m][0]) for m in REPORTED},
            "bits_per_byte_degradation_ci95": [float(v) for v in np.percentile(bpb_change, [2.5, 97.5])]}


def select(scores: Scores, rows: list[int]) -> Scores:
    return merge([(scores, row) for row in rows])


def merge(rows: list[tuple[Scores, int]]) -> Scores:
    """A Scores made of the given (scores, document row) entries, in that order."""
    out = Scores()
    for scores, row in rows:
        for f in fields(Scores):
            getattr(out, f.name).append(getattr(scores, f.name)[row])
    return out
