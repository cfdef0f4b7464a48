"""The regression gate: McNemar and the paired bootstrap by hand, and `shoal compare` on real models: a model made
worse on purpose is a regression, a model against itself passes, too few documents is inconclusive."""

import json
import math

import numpy as np
import pytest
import torch

from shoal.bundle import load_model, save_bundle
from shoal.errors import ShoalError
from shoal.eval.gate import compare_scores, mcnemar
from shoal.eval.metrics import expected_calibration_error
from shoal.eval.scoring import Scores

from ..conftest import STDLIB, shoal


def test_mcnemar_by_hand():
    right, wrong = np.ones(10, dtype=bool), np.zeros(10, dtype=bool)
    # 10 discordant pairs, all one way: exact two-sided binomial p = 2 * 0.5^10.
    assert mcnemar(right, wrong)["p_value"] == pytest.approx(2 / 2**10)
    # 30 against 10: chi-square with continuity correction, (|30 - 10| - 1)^2 / 40 = 9.025 on one degree of freedom.
    base = np.array([True] * 30 + [False] * 10 + [True] * 5)
    cand = np.array([False] * 30 + [True] * 10 + [True] * 5)
    test = mcnemar(base, cand)
    assert (test["only_baseline_right"], test["only_candidate_right"]) == (30, 10)
    assert test["p_value"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert mcnemar(right, right)["p_value"] == 1.0


def synthetic_scores(nats: list[float], tokens: int = 100, seed: int = 0, nbytes: int = 400) -> Scores:
    rng = np.random.default_rng(seed)
    scores = Scores()
    for i, n in enumerate(nats):
        confidence = rng.uniform(0, 1, tokens)
        correct = rng.uniform(0, 1, tokens) < confidence
        scores.names.append(f"d{i}")
        scores.nats.append(n)
        scores.tokens.append(tokens)
        scores.bytes.append(nbytes)
        scores.top1.append(int(correct.sum()))
        scores.top5.append(int(correct.sum()))
        scores.brier.append(0.5 * tokens)
        scores.confidence.append(confidence)
        scores.correct.append(correct)
        scores.correct5.append(correct)
    return scores


def test_paired_bootstrap_verdicts():
    base = synthetic_scores([300.0] * 20)
    same = compare_scores(base, base)
    assert same["verdict"] == "pass"
    for m in same["metrics"].values():
        assert m["harm"] == 0 and m["harm_ci"] == [0, 0]
    confidence, correct = np.concatenate(base.confidence), np.concatenate(base.correct)
    assert same["metrics"]["ece"]["baseline"] == pytest.approx(expected_calibration_error(confidence, correct))
    # Every document 20 nats worse: 0.2 nats/token and 0.2 / (4 ln 2) bits per byte, whichever documents are drawn.
    worse = synthetic_scores([320.0] * 20)
    result = compare_scores(worse, base, fail_on=["bits_per_byte", "loss"])
    assert result["verdict"] == "regression"
    assert result["metrics"]["loss"]["harm_ci"] == pytest.approx([0.2, 0.2])
    assert result["metrics"]["bits_per_byte"]["harm"] == pytest.approx(0.2 / (4 * math.log(2)))
    # Half the documents better, half worse by as much: the interval straddles any small margin.
    mixed = synthetic_scores([280.0, 320.0] * 10)
    assert compare_scores(mixed, base, fail_on=["loss"])["verdict"] == "inconclusive"
    # Better everywhere is a pass; fewer documents than the minimum is inconclusive whatever the figures.
    assert compare_scores(synthetic_scores([250.0] * 20), base, fail_on=["loss"])["verdict"] == "pass"
    small = synthetic_scores([300.0] * 3)
    assert compare_scores(synthetic_scores([400.0] * 3), small, fail_on=["loss"])["verdict"] == "inconclusive"


def test_different_tokenizers_compare_on_bytes_only():
    base = synthetic_scores([300.0] * 20)
    other = synthetic_scores([330.0] * 20, tokens=120)  # the same documents cut into more tokens
    result = compare_scores(other, base, fail_on=["bits_per_byte"], same_tokenizer=False)
    assert set(result["metrics"]) == {"bits_per_byte", "ece"} and not result["same_tokenizer"]
    assert result["verdict"] == "regression"
    with pytest.raises(ShoalError, match="different tokenizers, so top1_accuracy cannot be compared"):
        compare_scores(other, base, fail_on=["bits_per_byte", "top1_accuracy"], same_tokenizer=False)
    with pytest.raises(ShoalError, match="not scored on the same documents"):
        compare_scores(synthetic_scores([300.0] * 19), base)


@pytest.fixture(scope="module")
def worse_bundle(trained_run, tmp_path_factory):
    """The trained model with noise added to every weight, saved as a bundle like any other."""
    loaded = load_model(trained_run)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 3 * p.std().clamp_min(0.01))
    return save_bundle(loaded.model, loaded.tokenizer, tmp_path_factory.mktemp("worse") / "bundle",
                       {"parent": str(trained_run), "method": "noise"})


def test_compare_cli_verdicts(trained_run, worse_bundle, tmp_path):
    data = ["--data", str(STDLIB / "email" / "mime"), "--data", str(STDLIB / "json")]  # 13 small documents
    result = shoal("compare", str(worse_bundle), str(trained_run), *data, "--out", str(tmp_path / "worse"))
    assert result.returncode == 1, result.stderr + result.stdout
    report = json.loads((tmp_path / "worse" / "compare.json").read_text())
    assert report["verdict"] == "regression" and report["documents"] == 13
    bpb = report["metrics"]["bits_per_byte"]
    assert bpb["harm_ci"][0] > bpb["margin"] and bpb["candidate"] > bpb["baseline"]
    top1 = report["metrics"]["top1_accuracy"]
    assert top1["mcnemar"]["only_baseline_right"] > top1["mcnemar"]["only_candidate_right"]
    assert "REGRESSION" in (tmp_path / "worse" / "compare.md").read_text()
    assert (tmp_path / "worse" / "compare.png").stat().st_size > 5_000

    result = shoal("compare", str(trained_run), str(trained_run), *data, "--out", str(tmp_path / "self"))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "PASS on 13 documents" in result.stdout

    # The run's own validation split holds only a few documents: too few to judge either way.
    result = shoal("compare", str(worse_bundle), str(trained_run), "--out", str(tmp_path / "small"))
    assert result.returncode == 2, result.stderr + result.stdout
    report = json.loads((tmp_path / "small" / "compare.json").read_text())
    assert report["documents"] < 10 and "at least 10" in report["metrics"]["bits_per_byte"]["why"]


def test_compare_bad_input_exits_3_and_writes_nothing(trained_run, tmp_path):
    for args, words in ((["--fail-on", "bleu"], "unknown metric bleu"),
                        (["--margin", "loss=-1"], "--margin"),
                        (["--resamples", "many"], "Invalid value for '--resamples'"),  # a usage error, still 3
                        ([], "neither a run folder")):
        target = str(tmp_path / "missing") if not args else str(trained_run)
        result = shoal("compare", target, str(trained_run), *args, "--out", str(tmp_path / "out"))
        assert result.returncode == 3, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
