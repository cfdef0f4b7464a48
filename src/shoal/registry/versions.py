"""Registering a model version with its lineage, and fetching one back with every artifact checked.

A version's lineage (lineage.json, an artifact of its MLflow run, summarised in tags):
- dataset: the fingerprint of the data it was trained on, and its dataset card (a file of the bundle);
- config: the resolved training and model config (the bundle's config.json);
- code: shoal's version and, in a git checkout, the commit (and whether the tree had changes);
- parent: the registered version whose weights it was compressed or fine-tuned from, found by the weights' sha256;
- evaluation: bits per byte and accuracy on `--data`, with the documents' checksum, the set promotion gates on;
- artifacts: the sha256 of every file, checked before a fetched version is loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from shoal import __version__
from shoal.bundle import LoadedModel, export_bundle, load_bundle
from shoal.data.sources import iter_documents, resolve_sources
from shoal.errors import ShoalError
from shoal.io import sha256_file
from shoal.registry.store import SHA_TAG, Store, check_name

LINEAGE_FILE = "lineage.json"
WEIGHTS_TAG = "shoal.weights_sha256"
DIGEST_PARAM = "shoal.checksums_sha256"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _digest(shas: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(shas, sort_keys=True).encode()).hexdigest()


def register(store: Store, source: Path, name: str, data: list[str] | None = None,
             description: str = "") -> Any:
    """A new version of `name` from a bundle (or a run folder, exported first); returns the MLflow model version."""
    check_name(name)
    with tempfile.TemporaryDirectory(prefix="shoal-register-") as scratch:
        if (source / "checkpoints").is_dir() and not (source / "manifest.json").is_file():
            source = export_bundle(source, Path(scratch) / "bundle")
        loaded = load_bundle(source)  # verifies the bundle's own checksums first
        documents = evaluation_set(data) if data else None
        lineage = build_lineage(store, source, loaded, documents, data or [])
        lineage_path = Path(scratch) / LINEAGE_FILE
        lineage_path.write_text(json.dumps(lineage, indent=2, sort_keys=True))
        shas = {f"bundle/{p.name}": sha256_file(p) for p in sorted(source.iterdir()) if p.is_file()}
        shas[LINEAGE_FILE] = sha256_file(lineage_path)
        run = store.client.create_run(store.experiment_id(), run_name=name, tags={"shoal.model": name})
        run_id = run.info.run_id
        try:
            # Tags can be edited later, params cannot: the checksums' own digest, as a param, anchors them.
            store.client.log_param(run_id, DIGEST_PARAM, _digest(shas))
            store.client.log_artifacts(run_id, str(source), "bundle")
            store.client.log_artifact(run_id, str(lineage_path))
            for key, value in _params(lineage).items():
                store.client.log_param(run_id, key, value)
            for key, value in (lineage.get("evaluation") or {}).get("metrics", {}).items():
                store.client.log_metric(run_id, key, value)
        finally:
            store.client.set_terminated(run_id)
        try:
            store.client.create_registered_model(name)
        except store.mlflow.exceptions.MlflowException:
            pass  # it exists
        tags = {SHA_TAG: json.dumps(shas, sort_keys=True), WEIGHTS_TAG: shas["bundle/model.safetensors"],
                "shoal.dataset_fingerprint": lineage["dataset"]["fingerprint"] or "",
                "shoal.parent": lineage["parent"] or ""}
        return store.client.create_model_version(name, f"{run.info.artifact_uri}/bundle", run_id=run_id, tags=tags,
                                                 description=description)


def evaluation_set(data: list[str]) -> list[tuple[str, str]]:
    return [(doc.origin, doc.text) for doc in iter_documents(resolve_sources(data, key="--data"))]


def documents_sha256(documents: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for origin, text in documents:
        digest.update(origin.encode() + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def build_lineage(store: Store, bundle: Path, loaded: LoadedModel, documents: list[tuple[str, str]] | None,
                  data: list[str]) -> dict[str, Any]:
    config = json.loads((bundle / "config.json").read_text())
    provenance = config.get("provenance") or {}
    card = bundle / "dataset_card.md"
    parent_sha = (provenance.get("lineage") or {}).get("parent_weights_sha256")
    evaluation = None
    if documents is not None:
        from shoal.eval.scoring import score_documents

        scores = score_documents(loaded.model, loaded.tokenizer, documents)
        tokens = max(1, sum(scores.tokens))
        evaluation = {"data": [str(Path(d).resolve()) if d != "stdlib" else d for d in data],
                      "documents": len(documents), "documents_sha256": documents_sha256(documents),
                      "metrics": {"bits_per_byte": scores.bits_per_byte(), "loss": sum(scores.nats) / tokens,
                                  "top1_accuracy": sum(scores.top1) / tokens}}
    return {"dataset": {"fingerprint": provenance.get("dataset_fingerprint"),
                        "card_sha256": sha256_file(card) if card.is_file() else None},
            "config": {"model": config.get("model"), "training": config.get("training"),
                       "quantization": config.get("quantization")},
            "provenance": provenance, "code": code_version(),
            "parent": _find_parent(store, parent_sha) if parent_sha else None, "evaluation": evaluation}


def code_version() -> dict[str, Any]:
    """shoal's version, and the git commit when shoal runs from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {"shoal": __version__, "git_commit": commit or None, "uncommitted_changes": dirty}


def _find_parent(store: Store, weights_sha256: str) -> str | None:
    if not SHA256.match(str(weights_sha256)):
        return None  # not a checksum: nothing to look up (and nothing to put in a filter string)
    found = store.client.search_model_versions(f"tags.`{WEIGHTS_TAG}` = '{weights_sha256}'")
    return f"{found[0].name}/{found[0].version}" if found else None


def _params(lineage: dict[str, Any]) -> dict[str, Any]:
    model = (lineage["config"].get("model") or {})
    params = {f"model.{k}": v for k, v in model.items() if not isinstance(v, dict)}
    params["dataset_fingerprint"] = lineage["dataset"]["fingerprint"]
    params["parent"] = lineage["parent"]
    return params


def fetch(store: Store, reference: str, into: Path | None = None) -> tuple[Any, Path]:
    """(model version, bundle folder) of `reference`, downloaded and checked file by file against the sha256 recorded
    at registration: a modified, missing or extra artifact is refused before anything is loaded. The checksums are a
    tag of the version, and their own digest a parameter of its run, which MLflow does not let anyone change."""
    version = store.resolve(reference)
    label = f"{version.name}/{version.version}"
    expected = json.loads(version.tags.get(SHA_TAG) or "{}")
    if not expected:
        raise ShoalError(f"{label} was not registered by shoal (no checksums)")
    if store.client.get_run(version.run_id).data.params.get(DIGEST_PARAM) != _digest(expected):
        raise ShoalError(f"{label}: its recorded checksums were changed after registration; refusing to load it")
    created = into is None
    into = into or Path(tempfile.mkdtemp(prefix=f"shoal-{version.name}-{version.version}-"))
    try:
        store.mlflow.artifacts.download_artifacts(run_id=version.run_id, dst_path=str(into), tracking_uri=store.uri)
        found = {str(p.relative_to(into)): p for p in into.rglob("*") if p.is_file()}
        for rel in sorted(set(expected) | set(found)):
            if rel not in found:
                raise ShoalError(f"{label}: artifact {rel} is missing from the registry")
            if rel not in expected:
                raise ShoalError(f"{label}: artifact {rel} was not registered; refusing to load")
            if sha256_file(found[rel]) != expected[rel]:
                raise ShoalError(f"{label}: artifact {rel} was modified after registration (sha256 differs); "
                                 "refusing to load it")
    except BaseException:
        if created:
            shutil.rmtree(into, ignore_errors=True)
        raise
    return version, into / "bundle"


def lineage_of(store: Store, reference: str) -> tuple[Any, dict[str, Any]]:
    version, bundle = fetch(store, reference)
    try:
        return version, json.loads((bundle.parent / LINEAGE_FILE).read_text())
    finally:
        shutil.rmtree(bundle.parent, ignore_errors=True)
