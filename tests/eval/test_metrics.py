"""Evaluation figures against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from shoal.config import ModelConfig
from shoal.data.tokenizer import train_tokenizer
from shoal.eval.metrics import bits_per_byte, bootstrap_ratio_ci, expected_calibration_error, reliability_bins
from shoal.eval.scoring import score_documents
from shoal.models.transformer import Transformer


def test_expected_calibration_error_by_hand():
    confidence = np.array([0.9, 0.9, 0.6, 0.6, 0.95])
    correct = np.array([1, 0, 1, 1, 1])
    # Equal width: bin 9 holds 0.9, 0.9, 0.95 (accuracy 2/3, confidence 0.9167); bin 6 holds 0.6, 0.6 (1 vs 0.6).
    expected = 3 / 5 * abs(2 / 3 - (0.9 + 0.9 + 0.95) / 3) + 2 / 5 * abs(1 - 0.6)
    assert expected_calibration_error(confidence, correct, 10, "width") == pytest.approx(expected)
    # Equal mass, 2 bins after a stable sort: [0.6 right, 0.6 right, 0.9 right] and [0.9 wrong, 0.95 right].
    by_mass = 3 / 5 * abs(1 - 0.7) + 2 / 5 * abs(1 / 2 - 0.925)
    assert expected_calibration_error(confidence, correct, 2, "mass") == pytest.approx(by_mass)
    bins = reliability_bins(confidence, correct, 10, "width")
    assert [b.count for b in bins] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 3] and math.isnan(bins[0].accuracy)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0  # sure and right: calibrated


def test_bits_per_byte_and_bootstrap_by_hand():
    assert bits_per_byte(math.log(2) * 80, 10) == pytest.approx(8.0)  # 80 bits over 10 bytes
    low, high = bootstrap_ratio_ci(np.array([2.0, 2.0, 2.0]), np.array([1.0, 1.0, 1.0]))
    assert low == high == pytest.approx(2.0)  # identical documents: no spread
    low, high = bootstrap_ratio_ci(np.array([1.0, 3.0, 2.0, 5.0]), np.array([1.0, 1.0, 1.0, 1.0]))
    assert low < 11 / 4 < high
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["def add(a, b):\n    return a + b\n", "print('hello world')\n", "x = [1, 2, 3]\n"] * 20
    return train_tokenizer(iter(texts), 300)


def uniform_model(vocab: int, max_seq_len: int = 8) -> Transformer:
    """All weights zero: every logit is 0, so every next token has probability 1 / vocab."""
    model = Transformer(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, max_seq_len=max_seq_len))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_a_uniform_model_scores_log_vocab_per_token(tokenizer):
    vocab = 320
    model = uniform_model(vocab)
    text = "def add(a, b):\n    return a + b\n" * 3  # longer than the 8-token context: several windows
    scores = score_documents(model, tokenizer, [("doc", text)])
    n = len(tokenizer.encode(text, add_special_tokens=False).ids) + 1  # the text's tokens and the closing EOT
    assert scores.tokens == [n] and scores.bytes == [len(text.encode())]
    assert scores.nats[0] == pytest.approx(n * math.log(vocab), rel=1e-5)
    assert bits_per_byte(scores.nats[0], scores.bytes[0]) == pytest.approx(n * math.log2(vocab) / len(text), rel=1e-5)
    assert scores.brier[0] / n == pytest.approx(1 - 1 / vocab, rel=1e-5)  # sum p^2 - 2 p_y + 1 with p = 1/V
    confidence = np.concatenate(scores.confidence)
    assert len(confidence) == n and np.allclose(confidence, 1 / vocab)
    assert scores.top5[0] >= scores.top1[0]


def test_a_tokenizer_larger_than_the_model_is_refused(tokenizer):
    from shoal.errors import ShoalError

    with pytest.raises(ShoalError, match="not trained together"):
        score_documents(uniform_model(64), tokenizer, [("doc", "x = 1\n")])
    with pytest.raises(ShoalError, match="no documents"):
        score_documents(uniform_model(320), tokenizer, [])
