"""The registry's store: MLflow's model registry, a local SQLite file by default, any tracking server on request.

Where it lives: `--tracking-uri`, else MLFLOW_TRACKING_URI, else `sqlite:///runs/registry/mlflow.db` with artifacts in
`runs/registry/artifacts` (under the project's runs folder). A version is an MLflow run holding the bundle's files
and lineage.json as artifacts, registered as a model version whose tags hold the sha256 of every artifact: what
loading checks before anything is read.

Moving an alias and writing its history happen under a file lock, so two processes promoting or rolling back at once
leave one consistent history. The lock is a file beside the SQLite store (for a server: one per URI in
~/.cache/shoal): it serialises the processes of one machine, or of machines that share that folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError

DEFAULT_ROOT = Path("runs") / "registry"
EXPERIMENT = "shoal-registry"
HISTORY_TAG = "shoal.history."  # + six-digit sequence number: one alias event each
SHA_TAG = "shoal.sha256"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _mlflow():
    try:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow import MlflowClient
    except ImportError:
        raise ShoalError("the model registry needs MLflow: pip install 'shoal[registry]'") from None
    # MLflow sets its loggers up on import, then announces every table it creates: quiet below warnings.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow, MlflowClient


def _cache_dir() -> Path:
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ShoalError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 100, not starting "
                         "with a symbol)")
    return name


class Store:
    """One registry: the MLflow client, where artifacts go, and the lock that orders alias moves."""

    def __init__(self, tracking_uri: str | None = None, default_root: Path = DEFAULT_ROOT) -> None:
        mlflow, client_class = _mlflow()
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(default_root / 'mlflow.db').resolve()}"
        # A SQLite store keeps its artifacts and its lock beside the database file; a server stores artifacts its
        # own way, and the lock stays in runs/registry.
        self.root = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else default_root
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        # A SQLite store's lock sits beside it; a server's is per URI in the user's cache, whatever the folder.
        self.lock_path = self.root / "registry.lock" if uri.startswith("sqlite:///") else \
            _cache_dir() / f"registry-{hashlib.sha256(uri.encode()).hexdigest()[:16]}.lock"
        self.artifacts = (self.root / "artifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        self.client = client_class(tracking_uri=uri, registry_uri=uri)
        self.mlflow = mlflow

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=self.artifacts)
        except self.mlflow.exceptions.MlflowException:  # another process created it meanwhile
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes: alias moves and their history entries are read and written under it."""
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def model(self, name: str):
        try:
            return self.client.get_registered_model(check_name(name))
        except self.mlflow.exceptions.MlflowException:
            raise ShoalError(f"no registered model {name!r} in {self.uri}; shoal registry list shows them") from None

    def version(self, name: str, version: int | str):
        try:
            return self.client.get_model_version(name, str(version))
        except self.mlflow.exceptions.MlflowException:
            raise ShoalError(f"model {name!r} has no version {version}") from None

    def resolve(self, reference: str):
        """NAME@alias, NAME/version, NAME (its newest version), or models:/ in front of any of them."""
        reference = reference.removeprefix("models:/")
        if "@" in reference:
            name, alias = reference.split("@", 1)
            self.model(name)
            try:
                return self.client.get_model_version_by_alias(name, alias)
            except self.mlflow.exceptions.MlflowException:
                raise ShoalError(f"model {name!r} has no alias {alias!r}") from None
        name, _, version = reference.partition("/")
        if version:
            if not version.isdigit():
                raise ShoalError(f"{reference!r}: a version is a number (NAME/3), an alias follows @ (NAME@champion)")
            self.model(name)
            return self.version(name, version)
        versions = self.versions(name)
        if not versions:
            raise ShoalError(f"model {name!r} has no versions yet")
        return versions[-1]

    def versions(self, name: str) -> list:
        self.model(name)
        found = self.client.search_model_versions(f"name='{name}'")
        return sorted(found, key=lambda v: int(v.version))

    def history(self, name: str) -> list[dict[str, Any]]:
        tags = self.model(name).tags
        return [json.loads(tags[key]) for key in sorted(k for k in tags if k.startswith(HISTORY_TAG))]

    def record(self, name: str, event: dict[str, Any]) -> dict[str, Any]:
        """Append an alias event to the history (call under the lock)."""
        sequence = len(self.history(name)) + 1
        event = {"sequence": sequence, **event}
        self.client.set_registered_model_tag(name, f"{HISTORY_TAG}{sequence:06d}", json.dumps(event, sort_keys=True))
        return event
