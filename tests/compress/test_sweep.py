"""The sweep: the Pareto front and the recommendations by hand, and a real sweep of two variants whose report, gate
verdicts and recommendations agree with its own measurements."""

from __future__ import annotations

import json

import pytest

from shoal.compress.sweep import recommend, run_sweep
from shoal.compress.sweep_report import pareto_front, write_sweep

from ..cli.test_cli import assert_one_line_error
from ..conftest import STDLIB, shoal


def test_the_pareto_front_by_hand():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.5, 3.0)]
    assert pareto_front(points) == [0, 1, 3]  # (3, 4) and (2.5, 3) are beaten by (2, 3)


def row(size: float, speed: float, cost: float, verdict: str = "pass") -> dict:
    return {"bytes": size, "decode_tokens_per_second": speed, "usd_per_million_batched": cost, "verdict": verdict,
            "batched_tokens_per_second": 1.0, "bits_per_byte_change_percent": 0.0}


def test_recommendations_take_only_variants_within_the_margin_and_clear_gains():
    rows = {"original": row(10, 100, 1.0), "small": row(5, 105, 0.95), "smaller but worse": row(2, 200, 0.1,
                                                                                                      "regression"),
            "unsure": row(1, 300, 0.05, "inconclusive"), "fast": row(9, 150, 0.99)}
    picks = {target.split(" ")[0]: r["variant"] for target, r in recommend(rows).items()}
    # The smallest that passed; the fastest, clearly (+50%); cheapest: "small" saves only 5%, under the 10% bar.
    assert picks == {"smallest": "small", "lowest": "fast", "cheapest": "original"}


def test_a_sweep_of_two_variants(trained_run, tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep(trained_run, out, [str(STDLIB / "json"), str(STDLIB / "email" / "mime")], max_loss=0.01,
                       device="cpu", progress=False, variants=("int8-wo", "channels-50%"))
    write_sweep(result, out)
    assert json.loads((out / "sweep.json").read_text())["variants"].keys() == {"original", "int8-wo",
                                                                                "channels-50%"}
    assert (out / "pareto.png").stat().st_size > 10_000 and "## Recommendations" in (out / "sweep.md").read_text()
    assert (out / "variants" / "int8-wo" / "manifest.json").is_file()
    margin = result["margin_bits_per_byte"]
    for name, v in result["variants"].items():
        low, high = v["harm_ci"]
        if not name.startswith("original"):
            assert (v["verdict"] == "pass") == (high < margin), (name, v)
            assert (v["verdict"] == "regression") == (low > margin), (name, v)
    assert result["variants"]["channels-50%"]["parameters"] < result["variants"]["int8-wo"]["parameters"]
    kv = {name: v["serving_memory_bytes"] - v["bytes"] for name, v in result["variants"].items()}
    # K and V x 2 layers x 2 key/value heads x 16 channels x 2 bytes (bf16), for 32 rows of 64 positions
    assert kv["int8-wo"] == kv["original"] == (2 * 2 * 2 * 16 * 2) * 32 * 64
    assert all(0 < v["ece"] < 0.5 for v in result["variants"].values())
    for pick in result["recommendations"].values():
        chosen = pick["variant"]
        assert chosen.startswith("original") or result["variants"][chosen]["verdict"] == "pass"
    assert result["skipped"] == {} and result["documents"] >= 10


def test_bad_sweep_options(trained_run, tmp_path):
    from shoal.errors import ShoalError

    with pytest.raises(ShoalError, match="--hardware"):
        run_sweep(trained_run, tmp_path / "x", [], hardware="abacus", device="cpu", progress=False)
    assert not (tmp_path / "x").exists()
    assert_one_line_error(shoal("compress", str(trained_run), "--sweep", "--quantize", "int8-wo", "--out",
                                str(tmp_path / "x")), "--sweep builds its own variants")
    assert not (tmp_path / "x").exists()
