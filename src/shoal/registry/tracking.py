"""Training runs in MLflow: the resolved config as params, every metric by step, loss.png and summary.json as
artifacts, in the experiment "shoal-training" of the registry's store, so `mlflow ui` shows them.

One MLflow run per run folder: its id is kept in the folder (mlflow.json), so a resumed run adds its new steps to the
same MLflow run instead of starting another.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shoal.io import atomic_write_json
from shoal.registry.store import Store
from shoal.train.metrics import read_metrics

EXPERIMENT = "shoal-training"
ID_FILE = "mlflow.json"
METRICS = ("loss", "val_loss", "lr", "grad_norm", "tokens_per_second", "mfu", "moe_aux_loss", "moe_max_load_ratio")


def log_training_run(run_dir: Path, config: dict[str, Any], tracking_uri: str | None = None) -> str:
    """Log the run folder's config, new metrics and plots; returns the MLflow run id. The store defaults to the
    registry beside the run folder (OUT_DIR/registry)."""
    store = Store(tracking_uri, default_root=run_dir.parent / "registry")  # a clear error without MLflow
    from mlflow.entities import Metric, Param

    state_file = run_dir / ID_FILE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state.get("tracking_uri") != store.uri:
        state = {}  # another store: a run of its own there
    client = store.client
    if "run_id" not in state:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            EXPERIMENT, artifact_location=store.artifacts)
        run_id = client.create_run(experiment_id, run_name=run_dir.name, tags={"shoal.run_dir": str(run_dir)}
                                   ).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[start:start + 100])
        state = {"tracking_uri": store.uri, "run_id": run_id, "logged_step": 0}
    run_id = state["run_id"]
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] > state["logged_step"]]
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(r[key]), now, r["step"])
               for r in records for key in METRICS if isinstance(r.get(key), (int, float))]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    for name in ("loss.png", "experts.png", "summary.json", "config.json"):
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id)
    state["logged_step"] = max([state["logged_step"], *(r["step"] for r in records)])
    atomic_write_json(state_file, state)
    return run_id


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
