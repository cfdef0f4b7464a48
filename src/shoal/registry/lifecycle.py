"""Moving aliases: gated promotion, forced promotion (with its reason on record), rollback, all with history.

A promotion compares the new version with the alias's current holder on the evaluation set recorded with the new
version (shoal compare's paired bootstrap: bits per byte and top-1 accuracy, default margins) and refuses a
regression, or a version registered without an evaluation set, unless forced with a reason. The first holder of an
alias has nothing to be compared with. Every move is an event in the model's history: who, when, from, to, why and
the gate's result. A rollback undoes the newest promotion of the alias that has not been undone yet, so repeated
rollbacks walk back through the champions in order.
"""

from __future__ import annotations

import getpass
import re
import shutil
import socket
from datetime import datetime, timezone
from typing import Any

from shoal.errors import ShoalError
from shoal.registry.store import Store
from shoal.registry.versions import documents_sha256, evaluation_set, lineage_of

ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class PromotionRefused(ShoalError):
    """The gate found a regression: exit 1, nothing moved."""


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _event(action: str, alias: str, old: str | None, new: str | None, **extra: Any) -> dict[str, Any]:
    return {"action": action, "alias": alias, "from": old, "to": new, "who": _who(),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def _move(store: Store, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Point the event's alias at its `to` and record it (under the lock); if the record cannot be written, the alias
    goes back where it was, so the alias and its history never disagree."""
    store.client.set_registered_model_alias(name, event["alias"], event["to"])
    try:
        return store.record(name, event)
    except BaseException:
        if event["from"] is None:
            store.client.delete_registered_model_alias(name, event["alias"])
        else:
            store.client.set_registered_model_alias(name, event["alias"], event["from"])
        raise


def check_alias(alias: str) -> None:
    """MLflow's rules for aliases, checked before any work: letters, digits, '_' and '-'; not 'latest', not 'v'
    followed by digits (those read as versions)."""
    if not ALIAS.match(alias or "") or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ShoalError(f"alias {alias!r}: use letters, digits, '_' or '-' (not 'latest' or v<number>)")


def holder(store: Store, name: str, alias: str) -> str | None:
    aliases = store.model(name).aliases or {}
    return str(aliases[alias]) if alias in aliases else None


def promote(store: Store, name: str, version: int, alias: str = "champion", force: bool = False,
            reason: str = "") -> dict[str, Any]:
    """Point `alias` at `version` if it passes the gate against the current holder; returns the history event."""
    if force and not reason.strip():
        raise ShoalError("--force needs --reason \"...\": the history records why the gate was overridden")
    check_alias(alias)
    store.version(name, version)
    with store.lock():
        current = holder(store, name, alias)
        if current == str(version):
            raise ShoalError(f"{name}@{alias} is already version {version}")
        gate = None if current is None else gate_against(store, name, str(version), current)
        if gate is not None and gate["verdict"] == "not run" and not force:
            raise PromotionRefused(f"{gate['summary']}; register it with --data, or promote with --force --reason")
        if gate is not None and gate["verdict"] == "regression" and not force:
            event = _event("refused", alias, current, str(version), gate=gate)
            store.record(name, event)
            raise PromotionRefused(f"{name}/{version} is a regression against {name}/{current} on its evaluation "
                                   f"set ({gate['summary']}); nothing moved. Use --force --reason \"...\" to "
                                   "override")
        extra = {"gate": gate, "forced": force and gate is not None and gate["verdict"] in ("regression", "not run")}
        return _move(store, name, _event("promote", alias, current, str(version), reason=reason, **extra))


def gate_against(store: Store, name: str, candidate: str, baseline: str) -> dict[str, Any]:
    """shoal compare of two versions on the candidate's recorded evaluation set."""
    from shoal.bundle import load_bundle
    from shoal.eval.gate import compare_scores
    from shoal.eval.scoring import score_documents
    from shoal.registry.versions import fetch

    _, lineage = lineage_of(store, f"{name}/{candidate}")
    evaluation = lineage.get("evaluation")
    if not evaluation:
        return {"verdict": "not run", "summary": f"{name}/{candidate} was registered without --data, so there is "
                                                 "no evaluation set to gate on"}
    documents = evaluation_set(evaluation["data"])
    if documents_sha256(documents) != evaluation["documents_sha256"]:
        raise ShoalError(f"the evaluation set of {name}/{candidate} ({', '.join(evaluation['data'])}) has changed "
                         "since it was registered; register the version again")
    scores, folders = [], []
    try:
        for version in (candidate, baseline):
            _, bundle = fetch(store, f"{name}/{version}")
            folders.append(bundle.parent)
            loaded = load_bundle(bundle)
            scores.append(score_documents(loaded.model, loaded.tokenizer, documents))
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    result = compare_scores(*scores)
    bpb = result["metrics"]["bits_per_byte"]
    return {"verdict": result["verdict"], "documents": result["documents"],
            "bits_per_byte": [bpb["baseline"], bpb["candidate"]],
            "summary": f"{result['verdict']} on {result['documents']} documents: bits per byte "
                       f"{bpb['baseline']:.4f} -> {bpb['candidate']:.4f}"}


def rollback(store: Store, name: str, alias: str = "champion") -> dict[str, Any]:
    """Move `alias` back to the holder before its newest promotion not yet undone; returns the history event."""
    check_alias(alias)
    with store.lock():
        events = [e for e in store.history(name) if e["alias"] == alias]
        undone = {e["undoes"] for e in events if e["action"] == "rollback"}
        promotions = [e for e in events if e["action"] == "promote" and e["sequence"] not in undone]
        if not promotions:
            raise ShoalError(f"{name}@{alias} has no promotion left to roll back")
        last = promotions[-1]
        current = holder(store, name, alias)
        if current != last["to"]:
            raise ShoalError(f"{name}@{alias} points at version {current}, not {last['to']} as its history says: "
                             "it was moved outside shoal; promote the version you want instead")
        if last["from"] is None:
            raise ShoalError(f"{name}@{alias} had no holder before version {last['to']}; nothing to roll back to")
        return _move(store, name, _event("rollback", alias, current, last["from"], undoes=last["sequence"]))
