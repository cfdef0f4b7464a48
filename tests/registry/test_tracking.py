"""Training runs are logged to MLflow: config as params, metrics by step, the loss plot; a resumed run adds its new
steps to the same MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.registry.store import Store
from shoal.train.run import run_training


def test_a_training_run_and_its_resumption_land_in_one_mlflow_run(small_config):
    small_config.logging.mlflow, small_config.logging.plot, small_config.train.steps = True, True, 4
    run_dir = Path(run_training(small_config)["run_dir"])
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    small_config.train.steps = 6
    run_training(small_config, resume="auto")
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id
    store = Store(default_root=run_dir.parent / "registry")
    run = store.client.get_run(run_id)
    assert run.data.params["model.d_model"] == "64" and run.data.params["train.lr"] == str(small_config.train.lr)
    losses = store.client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4, 5, 6]
    assert {m.step for m in store.client.get_metric_history(run_id, "val_loss")} == {4, 6}
    assert {a.path for a in store.client.list_artifacts(run_id)} >= {"loss.png", "summary.json", "config.json"}
