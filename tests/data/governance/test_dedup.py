"""Exact and near duplicates on a constructed corpus: what is clustered, what is kept, and what is left alone."""

import random

import pytest

from shoal.data.governance.dedup import Deduplicator, content_hash, jaccard

WORDS = ("data model train loss batch token layer shard value index query result error state cache node graph "
         "file path name size count score weight table field record stream buffer queue event signal").split()


def document(seed: int, words: int = 400) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(10)) for _ in range(words // 10)]
    return "\n".join(lines)


def edit(text: str, fraction: float, seed: int) -> str:
    """Replace `fraction` of the words, spread over the document (a light rewrite)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = "changed" + str(i)
    return " ".join(words)


def test_exact_and_near_duplicates_are_clustered_and_the_first_is_kept():
    base = document(0)
    corpus = {
        "a": base,
        "a-reformatted": "\n\n" + base.replace("\n", "  \r\n") + "\n",  # whitespace and line endings only
        "a-light-edit": edit(base, 0.01, seed=1),
        "b": document(1),
        "a-heavy-edit": edit(base, 0.3, seed=2),
        "c": document(2),
        "b-light-edit": edit(document(1), 0.01, seed=3),
    }
    assert jaccard(base, corpus["a-light-edit"]) > 0.8 > jaccard(base, corpus["a-heavy-edit"])
    dedup = Deduplicator()
    verdicts = {key: dedup.add(key, text) for key, text in corpus.items()}
    assert verdicts == {"a": None, "a-reformatted": "a", "a-light-edit": "a", "b": None, "a-heavy-edit": None,
                        "c": None, "b-light-edit": "b"}
    clusters = dedup.duplicate_clusters()
    assert [(c.kept, c.exact, c.near) for c in clusters] == [("a", ["a-reformatted"], ["a-light-edit"]),
                                                             ("b", [], ["b-light-edit"])]


def test_shared_boilerplate_does_not_make_documents_duplicates():
    header = "# Copyright 2024 The Authors. Licensed under the Apache License, Version 2.0.\n" * 3
    dedup = Deduplicator()
    assert [dedup.add(i, header + document(10 + i)) for i in range(20)] == [None] * 20


def test_results_are_deterministic_and_depend_on_order_only():
    corpus = [(i, edit(document(i % 5), 0.005, seed=i)) for i in range(30)]
    runs = []
    for _ in range(2):
        dedup = Deduplicator(seed=7)
        runs.append([dedup.add(k, t) for k, t in corpus])
    assert runs[0] == runs[1]
    assert sum(v is None for v in runs[0]) == 5  # one kept per source document


def test_tiny_and_empty_documents():
    dedup = Deduplicator()
    assert dedup.add("empty", "") is None
    assert dedup.add("blank", "  \n\n") == "empty"  # same normalized content: an exact duplicate
    assert dedup.add("short", "x = 1") is None
    assert dedup.add("short-again", "X = 1") == "short"  # shingles are lower-cased words
    assert content_hash("a\r\nb  ") == content_hash("a\nb")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        Deduplicator(threshold=0)
