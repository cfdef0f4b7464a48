"""Recovery fine-tuning after pruning: it lowers the pruned model's validation loss with the trainer, keeps the zeros
that unstructured pruning set, records itself in the lineage, and refuses requests it cannot honour."""

from __future__ import annotations

import json

import pytest

from shoal.bundle import load_model
from shoal.compress.make import compress_model, training_config
from shoal.compress.prune import block_linears
from shoal.compress.recover import training_data
from shoal.errors import ShoalError


def test_recovery_lowers_the_pruned_models_loss(trained_run, tmp_path):
    out = tmp_path / "recovered"
    compress_model(trained_run, out, prune="channels", sparsity=0.5, recover_steps=4, recover_lr=3e-3)
    steps = json.loads((out / "config.json").read_text())["provenance"]["lineage"]["steps"]
    assert [s["method"] for s in steps] == ["prune-channels", "recover"]
    before, after = steps[1]["val_loss"]
    assert after < before - 0.05
    assert steps[1]["settings"]["steps"] == 4 and steps[1]["settings"]["lr"] == 3e-3
    assert load_model(out).model.config.d_ff == steps[0]["settings"]["d_ff"][1]


def test_recovery_keeps_the_zeros_of_unstructured_pruning(trained_run, tmp_path):
    out = tmp_path / "sparse"
    compress_model(trained_run, out, prune="2:4", recover_steps=2, recover_lr=3e-3)
    weights = block_linears(load_model(out).model)
    assert sum(int((m.weight == 0).sum()) for m in weights) == sum(m.weight.numel() for m in weights) // 2
    steps = json.loads((out / "config.json").read_text())["provenance"]["lineage"]["steps"]
    assert steps[1]["val_loss"][1] < steps[1]["val_loss"][0]


def test_bad_recovery_requests_write_nothing(trained_run, tmp_path):
    out = tmp_path / "never"
    for kwargs, words in (({"prune": "heads", "recover_steps": -1}, "--recover-steps must be"),
                          ({"prune": "heads", "recover_lr": 1e-3}, "give both"),
                          ({"prune": "heads", "recover_steps": 3, "recover_lr": 0.0}, "--recover-lr > 0")):
        with pytest.raises(ShoalError, match=words):
            compress_model(trained_run, out, **kwargs)
    assert not out.exists()
    # Recovery trains on exactly the prepared data the model was trained on, from the cache, or refuses.
    training = training_config(trained_run)
    with pytest.raises(ShoalError, match="not in"):
        training_data(training, "f" * 64)
    with pytest.raises(ShoalError, match="dataset fingerprint"):
        training_data(training, None)
    assert training_data(training, load_model(trained_run).info["dataset_fingerprint"]).manifest["tokens"]["train"] > 0
