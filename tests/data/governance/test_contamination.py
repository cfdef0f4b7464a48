"""Contamination: evaluation documents copied (in part) into training are found; unrelated ones are not."""

import random

import numpy as np
import pytest

from shoal.data.governance.contamination import NgramIndex, find_contaminated, ngram_hashes

WORDS = [f"w{i}" for i in range(2000)]


def text(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def test_overlap_is_the_share_of_ngrams_seen_in_training():
    train = [text(i) for i in range(50)]
    index = NgramIndex(n=13)
    for doc in train:
        index.add(doc)
    assert index.overlap(train[3]) == 1.0
    assert index.overlap(text(999)) == 0.0
    half = " ".join(train[7].split()[:150]) + " " + " ".join(text(1000).split()[:150])
    assert index.overlap(half) == pytest.approx(138 / 288, abs=1e-9)  # 150 - 12 of the 300 - 12 n-grams


def test_case_and_whitespace_do_not_hide_a_copy():
    index = NgramIndex(n=13)
    doc = text(5)
    index.add(doc)
    disguised = "\n\n".join("   ".join(line.split()).upper() for line in [doc[: len(doc) // 2], doc[len(doc) // 2:]])
    assert index.overlap(disguised) > 0.9


def test_find_contaminated_reports_the_documents_over_the_threshold():
    index = NgramIndex(n=13)
    train = [text(i) for i in range(20)]
    for doc in train:
        index.add(doc)
    evaluation = [("copied", train[0]), ("clean", text(100)), ("short", "too short to judge"),
                  ("quarter", " ".join(train[1].split()[:90] + text(101).split()[:210]))]
    found = find_contaminated(index, evaluation, threshold=0.2)
    assert [(c.key, round(c.overlap, 3)) for c in found] == [("copied", 1.0), ("quarter", round(78 / 288, 3))]
    with pytest.raises(ValueError, match="threshold"):
        find_contaminated(index, evaluation, threshold=0)


def test_hashes_are_stable_and_positional():
    a = ngram_hashes("one two three four", 2)
    assert len(a) == 3 and a.dtype == np.uint64
    assert np.array_equal(a, ngram_hashes("ONE  two\nthree four", 2))
    assert ngram_hashes("two one", 2)[0] != ngram_hashes("one two", 2)[0]  # order matters
    assert len(ngram_hashes("a b", 13)) == 0
