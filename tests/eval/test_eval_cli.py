"""`shoal eval` on a trained run and on its bundle: the report renders, the figures agree with each other, and bad
input is one line."""

import json
import math

from ..cli.test_cli import assert_one_line_error
from ..conftest import STDLIB, shoal


def test_eval_report_of_a_run(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = shoal("eval", str(trained_run), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "bits/byte" in result.stdout and f"{out}/report.md" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["data"].startswith("validation split of dataset")
    q, per_doc = report["quality"], report["per_document"]
    assert report["documents"] == len(per_doc["names"]) > 1 and report["tokens"] == sum(per_doc["tokens"])
    nats = sum(per_doc["nats"])
    assert q["loss"]["value"] == nats / report["tokens"]
    assert q["bits_per_byte"]["value"] == nats / (report["bytes"] * math.log(2))
    assert q["perplexity"]["value"] == math.exp(q["loss"]["value"])
    for key in ("loss", "bits_per_byte", "top1_accuracy", "top5_accuracy"):
        low, high = q[key]["ci95"]
        assert low <= q[key]["value"] <= high, key
    assert 0 < q["top1_accuracy"]["value"] <= q["top5_accuracy"]["value"] < 1
    calibration = report["calibration"]
    assert 0 <= calibration["ece_equal_width"] < 1 and 0 < calibration["brier"] < 2
    assert sum(b["count"] for b in calibration["bins_equal_width"]) == report["tokens"]
    assert "| bits per byte |" in (out / "report.md").read_text()
    assert (out / "reliability.png").stat().st_size > 10_000
    # The default suite also measures robustness, speed and cost.
    robustness = report["robustness"]
    assert set(robustness["perturbations"]) == {"typos", "case", "whitespace", "identifiers"}
    worst = max(p["degradation"]["bits_per_byte"] for p in robustness["perturbations"].values())
    assert robustness["perturbations"][robustness["worst"]]["degradation"]["bits_per_byte"] == worst
    assert robustness["adversarial"]["perturbed"]["bits_per_byte"] >= robustness["adversarial"]["clean"]["bits_per_byte"]
    efficiency = report["efficiency"]
    assert efficiency["prefill_ms"]["p50"] <= efficiency["prefill_ms"]["p95"]
    assert set(efficiency["throughput"]) == {"1", "8", "32"} and efficiency["size_on_disk_bytes"] > 0
    measured = report["cost"]["rows"][0]
    assert measured["hardware"] == "cpu-instance" and measured["source"].startswith("measured")
    assert measured["decode_batch1_usd_per_million"] == 0.36 / 3600 / efficiency["decode_tokens_per_second"] * 1e6
    for png in ("robustness.png", "cost.png"):
        assert (out / png).stat().st_size > 5_000


def test_eval_of_a_bundle_needs_documents(trained_run, tmp_path):
    bundle = tmp_path / "bundle"
    assert shoal("export", str(trained_run), "--out", str(bundle)).returncode == 0
    assert_one_line_error(shoal("eval", str(bundle), "--out", str(tmp_path / "a")), "is a bundle", "--data")
    result = shoal("eval", str(bundle), "--data", str(STDLIB / "json"), "--suite", "quick", "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b" / "report.json").read_text())["documents"] == len(list((STDLIB / "json").glob("*.py")))
    assert_one_line_error(shoal("eval", str(bundle), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "c")),
                          "does not exist", "--data")
    assert_one_line_error(shoal("eval", str(tmp_path / "missing"), "--out", str(tmp_path / "d")), "neither a run folder")
    assert "robustness" not in json.loads((tmp_path / "b" / "report.json").read_text())  # the quick suite


def test_eval_bad_options_write_nothing(trained_run, tmp_path):
    bad_table = tmp_path / "prices.toml"
    bad_table.write_text("[hardware.laptop]\nusd_per_hour = -1\n")
    for args, words in ((["--suite", "huge"], "unknown suite"), (["--hardware", "tpu"], "not in the price table"),
                        (["--prices", str(bad_table)], "[hardware.laptop] needs"),
                        (["--adversarial-tries", "0"], "at least 1")):
        assert_one_line_error(shoal("eval", str(trained_run), *args, "--out", str(tmp_path / "out")), words)
    assert not (tmp_path / "out").exists()
