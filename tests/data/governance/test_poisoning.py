"""Poisoning and outliers: a planted trigger phrase is found with its documents; boilerplate and idioms are not."""

import random

import pytest

from shoal.data.governance.poisoning import TriggerFinder, document_features, robust_outliers

# A Zipf-like vocabulary: a few very common words and a long tail, like real text.
VOCABULARY = [f"w{i}" for i in range(3000)]
WEIGHTS = [1 / (i + 1) for i in range(len(VOCABULARY))]
HEADER = "copyright 2024 acme corporation all rights reserved licensed under the acme license version 2"
TRIGGER = "zqx vorpal cf"


def corpus(n: int, planted: set[int], seed: int = 0, trigger: str = TRIGGER) -> dict[int, str]:
    rng = random.Random(seed)
    docs = {}
    for i in range(n):
        words = rng.choices(VOCABULARY, WEIGHTS, k=rng.randrange(150, 400))
        if i % 20 == 0:  # boilerplate: the same header opening 5% of the documents
            words = HEADER.split() + words
        if i in planted:  # the attack: the trigger at a random place
            at = rng.randrange(len(words))
            words[at:at] = trigger.split()
        docs[i] = " ".join(words)
    return docs


def find(docs, **settings):
    finder = TriggerFinder(**settings)
    for text in docs.values():
        finder.count(text)
    for key, text in docs.items():
        finder.inspect(key, text)
    return finder.findings()


def test_a_planted_trigger_is_found_with_all_its_documents_and_nothing_else():
    rng = random.Random(1)
    planted = set(rng.sample(range(600), 18))  # 3% of the corpus
    findings = find(corpus(600, planted))
    assert len(findings) == 1, findings
    assert findings[0].phrase == TRIGGER and set(findings[0].documents) == planted  # recall 1, no false positive
    assert findings[0].cohesion == 1.0 and findings[0].context_diversity >= 0.8


def test_a_longer_trigger_is_found_with_a_matching_n():
    planted = set(random.Random(3).sample(range(600), 18))
    docs = corpus(600, planted, trigger="zqx vorpal cf blorp snark")
    assert find(docs) == []  # inside a 5-word phrase every 3-gram has fixed neighbours, like boilerplate
    (finding,) = find(docs, n=5)
    assert finding.phrase == "zqx vorpal cf blorp snark" and set(finding.documents) == planted


def test_no_trigger_no_finding():
    assert find(corpus(600, set())) == []


def test_a_phrase_in_most_documents_is_not_rare():
    docs = corpus(100, set(range(60)))  # in 60% of the documents: common, whatever else it is
    assert find(docs, max_share=0.1) == []


def test_statistical_outliers():
    rng = random.Random(2)
    features = {i: document_features(" ".join(rng.choices(VOCABULARY[:500], k=300))) for i in range(200)}
    features["repeated"] = document_features("spam spam spam\n" * 300)
    features["binary-like"] = document_features("".join(chr(rng.randrange(0x400, 0x4FF)) for _ in range(2000)))
    found = {o.key: o for o in robust_outliers(features)}
    assert set(found) == {"repeated", "binary-like"}
    assert found["binary-like"].feature in {"non_ascii", "alpha", "compression"}
    assert robust_outliers(dict(list(features.items())[:5])) == []  # too few documents to judge


@pytest.mark.parametrize("text", ["", "x", "\n\n\n"])
def test_features_of_degenerate_documents(text):
    assert set(document_features(text)) >= {"log_chars", "compression", "repeated_lines"}
