"""Perturbations keep to their edit budget and are reproducible; identifier renaming keeps a program valid; the
adversary picks the worst candidate per document; cost figures follow the price table by hand."""

import ast
import re

import numpy as np
import pytest

from shoal.config import ModelConfig
from shoal.errors import ShoalError
from shoal.eval.cost import cost_table, estimated_tokens_per_second, load_prices, usd_per_million
from shoal.eval.perturb import PERTURBATIONS, perturb
from shoal.eval.robustness import evaluate_robustness
from shoal.eval.scoring import Scores
from shoal.models.transformer import Transformer

CODE = '''def total(values, start=0):
    """Add the values to start."""
    result = start
    for value in values:
        result = result + value
    return result.real


class Counter:
    limit = 3

    def bump(self, amount):
        self.amount = amount
        return total([amount], start=self.limit)


def label(name, width):
    sep = ", ".join([name] * 2)
    return f"{name}:{width} " + sep


def run():
    counter = Counter()
    return [counter.bump(2), counter.amount, label("a", width=4), sorted([3, 1], key=None, reverse=True)]


record(run())
'''
PROSE = " ".join(["the quick brown fox jumps over the lazy dog"] * 30) + "\n"


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]{3,}", text)


def test_perturbations_are_reproducible_and_within_budget():
    for kind in PERTURBATIONS:
        text = CODE if kind == "identifiers" else PROSE
        once, again, other = perturb(text, kind, 0, 0), perturb(text, kind, 0, 0), perturb(text, kind, 1, 0)
        assert once == again and once != text, kind
        assert other != once, kind  # another seed edits other places
    # Typos: 2% of 270 words is 5 words, each one edit away.
    changed = [(a, b) for a, b in zip(PROSE.split(), perturb(PROSE, "typos", 0, 0).split()) if a != b]
    assert len(changed) == 5 and all(abs(len(a) - len(b)) <= 1 for a, b in changed)
    # Case: 5% of the words, letters otherwise the same.
    recased = perturb(PROSE, "case", 0, 0)
    assert recased.lower() == PROSE.lower() and sum(a != b for a, b in zip(words(PROSE), words(recased))) == 14
    # Whitespace: 5% of the 269 spaces and 1 newline each get one more space or newline.
    spaced = perturb(PROSE, "whitespace", 0, 0)
    assert spaced.split() == PROSE.split() and len(spaced) - len(PROSE) == 14


def run_program(code: str) -> list:
    results = []
    exec(compile(code, "<doc>", "exec"), {"record": results.append})
    return results


def test_identifier_renaming_keeps_the_program():
    expected = run_program(CODE)
    for seed in range(10):
        renamed = perturb(CODE, "identifiers", seed, 0)
        assert ast.dump(ast.parse(renamed)) != ast.dump(ast.parse(CODE))
        assert run_program(renamed) == expected, renamed  # same behaviour, other names
        new_names = set(re.findall(r"\bv\d+\b", renamed))
        assert 1 <= len(new_names) <= 3  # a quarter of the 9 renameable names, rounded
        for kept in ("self.amount", "def bump", "limit = 3", "start=", "width=4", "{name}", "key=None"):
            assert kept in renamed  # members, keyword arguments and f-string names stay
    assert perturb(PROSE, "identifiers", 0, 0) is None  # not Python: does not apply


def fake_scores(documents: list[tuple[str, str]], phase: str = "") -> Scores:
    """A stand-in scorer whose loss is the number of upper-case letters: case changes hurt it most."""
    scores = Scores()
    for name, text in documents:
        n = len(text.split())
        scores.names.append(name)
        scores.nats.append(float(sum(c.isupper() for c in text)) + n)
        scores.tokens.append(n)
        scores.bytes.append(len(text.encode()))
        scores.top1.append(0)
        scores.top5.append(0)
        scores.brier.append(float(n))
        scores.confidence.append(np.full(n, 0.5))
        scores.correct.append(np.zeros(n, dtype=bool))
        scores.correct5.append(np.zeros(n, dtype=bool))
    return scores


def test_the_adversary_keeps_the_worst_candidate():
    documents = [("a", PROSE), ("b", CODE)]
    clean = fake_scores(documents)
    result = evaluate_robustness(fake_scores, documents, clean, tries=2, resamples=100)
    assert result["worst"] == "case"
    per_kind = result["perturbations"]
    assert per_kind["identifiers"]["documents"] == 1 and per_kind["typos"]["documents"] == 2
    adversarial = result["adversarial"]
    assert adversarial["chosen"]["case"] >= 1
    assert adversarial["degradation"]["bits_per_byte"] >= max(p["degradation"]["bits_per_byte"] for p in per_kind.values())


def test_cost_by_hand(tmp_path):
    prices = load_prices()
    assert {"cpu-instance", "consumer-gpu", "a100", "h100"} <= set(prices["hardware"])
    model = Transformer(ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, max_seq_len=64))
    row = {"bf16_tflops": 100.0, "memory_gb_per_s": 1000.0, "layer_overhead_us": 10.0}
    estimate = {"compute_efficiency": 0.5, "memory_efficiency": 1.0}
    # Batch-1 decode of a small model is bound by reading the bf16 weights, plus the per-layer overhead.
    kv = 2 * 2 * 4 * 16 * 2
    seconds = (model.num_params() * 2 + 11 * kv) / 1e12 + 2 * 10e-6
    assert estimated_tokens_per_second(model, row, estimate, 1, 1, 10) == pytest.approx(1 / seconds)
    assert usd_per_million(3.6, 1000) == pytest.approx(1.0)  # $3.60 an hour at 1000 tokens/s: $1 per million
    efficiency = {"throughput": {"1": {"decode_tokens_per_second": 50.0, "prefill_tokens_per_second": 400.0},
                                 "8": {"decode_tokens_per_second": 200.0, "prefill_tokens_per_second": 900.0}},
                  "prompt_tokens": 16, "new_tokens": 8, "decode_tokens_per_second": 50.0, "device": "cpu", "dtype": "float32"}
    table = cost_table(model, efficiency, prices, "cpu-instance")
    measured = table["rows"][0]
    assert table["batch"] == 8 and measured["source"].startswith("measured")
    assert measured["decode_batched_usd_per_million"] == pytest.approx(0.36 / 3600 / 200 * 1e6)
    assert len(table["rows"]) == len(prices["hardware"]) + 1
    with pytest.raises(ShoalError, match="not in the price table"):
        cost_table(model, efficiency, prices, "tpu")


@pytest.mark.parametrize("text, words", [("[hardware.x]\nusd_per_hour = 1\n", "needs description"),
                                         ("[hardware", "not valid TOML"), ("", "no [hardware.NAME]")])
def test_bad_price_tables(tmp_path, text, words):
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ShoalError, match=re.escape(words)):
        load_prices(path)
    with pytest.raises(ShoalError, match="cannot read"):
        load_prices(tmp_path / "missing.toml")
