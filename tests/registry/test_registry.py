"""The registry against a real MLflow SQLite store: register with lineage, gated promotion (a pass, a refused
regression, a forced one on record), rollback, a tampered artifact refused at load, and two processes promoting and
rolling back at once leaving one consistent history."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from shoal.bundle import load_model, save_bundle
from shoal.compress.make import compress_model
from shoal.errors import ShoalError
from shoal.io import sha256_file
from shoal.registry.lifecycle import PromotionRefused, holder, promote, rollback
from shoal.registry.store import Store
from shoal.registry.versions import fetch, lineage_of, register

from ..cli.test_cli import assert_one_line_error
from ..conftest import STDLIB, shoal

EVALUATION = [str(STDLIB / "email" / "mime"), str(STDLIB / "json")]  # 13 small documents


@pytest.fixture(scope="module")
def versions(trained_run, tmp_path_factory):
    """A store holding 1: the trained model, 2: the same in bf16 (as good), 3: noise added (worse)."""
    root = tmp_path_factory.mktemp("registry")
    store = Store(f"sqlite:///{root / 'mlflow.db'}")
    loaded = load_model(trained_run)
    as_bf16 = save_bundle(loaded.model.to(torch.bfloat16), loaded.tokenizer, root / "bf16",
                          {"dataset_fingerprint": loaded.info["dataset_fingerprint"]}, loaded.info["config"])
    generator = torch.Generator().manual_seed(0)
    worse = load_model(trained_run)
    with torch.no_grad():
        for p in worse.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 3 * p.std().clamp_min(0.01))
    noisy = save_bundle(worse.model, worse.tokenizer, root / "noisy", {"method": "noise"})
    for source in (trained_run, as_bf16, noisy):
        register(store, source, "tiny", EVALUATION)
    return store


def test_lineage_is_recorded_and_shown(versions, trained_run):
    version, lineage = lineage_of(versions, "tiny/1")
    assert str(version.version) == "1" and lineage["dataset"]["fingerprint"] == \
        load_model(trained_run).info["dataset_fingerprint"]
    assert lineage["dataset"]["card_sha256"] and lineage["config"]["training"]["train"]["steps"] == 12
    assert lineage["code"]["shoal"] and lineage["evaluation"]["documents"] == 13
    assert 0 < lineage["evaluation"]["metrics"]["bits_per_byte"] < 10
    shas = json.loads(version.tags["shoal.sha256"])
    assert set(shas) == {"bundle/model.safetensors", "bundle/tokenizer.json", "bundle/config.json",
                         "bundle/manifest.json", "bundle/dataset_card.md", "lineage.json"}
    assert str(versions.resolve("models:/tiny").version) == "3"  # the newest



def test_a_compressed_version_names_its_registered_parent(versions, tmp_path):
    compress_model(versions.root / "bf16", tmp_path / "int8", quantize="int8-wo")  # the bundle of tiny/2
    registered = register(versions, tmp_path / "int8", "tiny-int8")
    _, lineage = lineage_of(versions, f"tiny-int8/{registered.version}")
    assert lineage["parent"] == "tiny/2"
    assert [step["method"] for step in lineage["provenance"]["lineage"]["steps"]] == ["int8-wo"]


def test_promote_gate_force_rollback_and_history(versions):
    with pytest.raises(ShoalError, match="alias 'latest'"):
        promote(versions, "tiny", 1, alias="latest")
    promote(versions, "tiny", 1)  # no holder yet: no gate
    event = promote(versions, "tiny", 2)
    assert event["gate"]["verdict"] == "pass" and holder(versions, "tiny", "champion") == "2"
    with pytest.raises(PromotionRefused, match="regression against tiny/2"):
        promote(versions, "tiny", 3)
    assert holder(versions, "tiny", "champion") == "2"
    with pytest.raises(ShoalError, match="--reason"):
        promote(versions, "tiny", 3, force=True)
    forced = promote(versions, "tiny", 3, force=True, reason="a drill")
    assert forced["forced"] and forced["reason"] == "a drill" and forced["gate"]["verdict"] == "regression"
    assert rollback(versions, "tiny")["to"] == "2" and holder(versions, "tiny", "champion") == "2"
    assert rollback(versions, "tiny")["to"] == "1"
    with pytest.raises(ShoalError, match="no holder before version 1"):
        rollback(versions, "tiny")
    actions = [(e["action"], e["from"], e["to"]) for e in versions.history("tiny")]
    assert actions == [("promote", None, "1"), ("promote", "1", "2"), ("refused", "2", "3"), ("promote", "2", "3"),
                       ("rollback", "3", "2"), ("rollback", "2", "1")]
    assert all(e["who"] and e["when"] for e in versions.history("tiny"))


def test_the_cli_refuses_a_regression_with_exit_1(versions, tmp_path):
    uri = ["--tracking-uri", versions.uri]
    fetched = shoal("registry", "fetch", "tiny/1", "--out", str(tmp_path / "v1"), *uri)
    assert fetched.returncode == 0, fetched.stderr
    assert load_model(tmp_path / "v1").model.num_params() > 0
    result = shoal("registry", "promote", "tiny", "3", *uri)
    assert_one_line_error(result, "regression")
    assert result.returncode == 1
    assert "refused @champion" in shoal("registry", "history", "tiny", *uri).stdout
    with pytest.raises(ShoalError, match="no alias 'nobody'"):
        versions.resolve("tiny@nobody")
    with pytest.raises(ShoalError, match="model name"):
        register(versions, versions.root, "bad name")


def test_a_modified_artifact_is_refused_at_load(versions, tmp_path):
    _, bundle = fetch(versions, "tiny/2", tmp_path / "ok")
    assert load_model(bundle).model.num_params() > 0
    run_id = versions.resolve("tiny/2").run_id
    stored = next(p for p in versions.root.rglob("config.json") if run_id in str(p))
    stored.write_text(stored.read_text().replace('"d_model"', '"d_model" ', 1))
    with pytest.raises(ShoalError, match="bundle/config.json was modified after registration"):
        fetch(versions, "tiny/2", tmp_path / "tampered")
    # Rewriting the recorded checksums to match does not help: their digest is an immutable run parameter.
    shas = json.loads(versions.resolve("tiny/2").tags["shoal.sha256"])
    shas["bundle/config.json"] = sha256_file(stored)
    versions.client.set_model_version_tag("tiny", "2", "shoal.sha256", json.dumps(shas, sort_keys=True))
    with pytest.raises(ShoalError, match="checksums were changed after registration"):
        fetch(versions, "tiny/2", tmp_path / "retagged")


WORKER = textwrap.dedent("""
    import sys
    from shoal.errors import ShoalError
    from shoal.registry.lifecycle import promote, rollback
    from shoal.registry.store import Store
    store = Store(sys.argv[1])
    for _ in range(2):
        for move in (lambda: promote(store, "race", 2, force=True, reason="race"), lambda: rollback(store, "race")):
            try:
                move()
            except ShoalError:
                pass  # the other process got there first
""")


def test_concurrent_promotions_leave_a_consistent_history(trained_run, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for _ in range(2):
        register(store, trained_run, "race")  # no evaluation set: promotion is forced past the gate
    promote(store, "race", 1)
    with pytest.raises(PromotionRefused, match="without --data"):
        promote(store, "race", 2)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, store.uri], stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()
    events = store.history("race")
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)) and len(events) >= 3
    state = None
    for e in events:  # replaying the history gives every move's starting point, and the alias it ends at
        if e["action"] in ("promote", "rollback"):
            assert e["from"] == state, events
            state = e["to"]
    assert state == holder(store, "race", "champion")
