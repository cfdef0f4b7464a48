"""`shoal registry`: versions, lineage, gated promotion, rollback and history on MLflow's model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.app import app

registry_app = typer.Typer(help="Model registry on MLflow: register, promote through the gate, roll back.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")

TrackingOption = Annotated[str | None, typer.Option(
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in runs/registry).")]
AliasOption = Annotated[str, typer.Option(help="The alias to move.")]


def _store(tracking_uri: str | None):
    from shoal.registry.store import Store

    return Store(tracking_uri)


@registry_app.command()
def register(bundle: Annotated[Path, typer.Argument(help="Bundle (or run folder, exported first).")],
             name: Annotated[str, typer.Option(help="Registered model name.")],
             data: Annotated[list[str] | None, typer.Option(
                 help="Evaluation set recorded with the version (repeatable); promotion gates on it.")] = None,
             description: Annotated[str, typer.Option(help="A note stored with the version.")] = "",
             tracking_uri: TrackingOption = None) -> None:
    """Register a new version with its lineage and the sha256 of every artifact."""
    from shoal.registry.versions import register as register_version

    version = register_version(_store(tracking_uri), bundle, name, data, description)
    typer.echo(f"registered {name}/{version.version} from {bundle}")


@registry_app.command("list")
def list_models(tracking_uri: TrackingOption = None) -> None:
    """Registered models: versions and aliases."""
    store = _store(tracking_uri)
    models = store.client.search_registered_models(max_results=1000)
    if not models:
        typer.echo(f"no registered models in {store.uri}")
    for model in sorted(models, key=lambda m: m.name):
        versions = store.versions(model.name)
        aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted((model.aliases or {}).items())) or "no aliases"
        typer.echo(f"{model.name}: {len(versions)} version(s), newest {versions[-1].version if versions else '-'}; "
                   f"{aliases}")


@registry_app.command()
def show(reference: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
         tracking_uri: TrackingOption = None) -> None:
    """A version's lineage (checked against its recorded checksums) as JSON."""
    from shoal.registry.versions import lineage_of

    version, lineage = lineage_of(_store(tracking_uri), reference)
    typer.echo(json.dumps({"name": version.name, "version": int(version.version), "run_id": version.run_id,
                           "aliases": list(version.aliases or []), "description": version.description or "",
                           **lineage}, indent=2, sort_keys=True))


@registry_app.command()
def fetch(reference: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
          out: Annotated[Path, typer.Option(help="Folder for the bundle (must not exist yet).")],
          tracking_uri: TrackingOption = None) -> None:
    """Download a version's bundle, every file checked, e.g. for shoal compare or shoal eval."""
    import shutil
    import tempfile

    from shoal.io import check_can_create_dir
    from shoal.registry.versions import fetch as fetch_version

    check_can_create_dir(out)
    with tempfile.TemporaryDirectory(prefix="shoal-fetch-") as scratch:
        version, bundle = fetch_version(_store(tracking_uri), reference, Path(scratch))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(bundle), out)
    typer.echo(f"{version.name}/{version.version} -> {out}")


@registry_app.command()
def promote(name: Annotated[str, typer.Argument(help="Registered model name.")],
            version: Annotated[int, typer.Argument(help="The version to promote.")],
            alias: AliasOption = "champion",
            force: Annotated[bool, typer.Option(help="Promote even if the gate finds a regression.")] = False,
            reason: Annotated[str, typer.Option(help="Why (required with --force; recorded).")] = "",
            tracking_uri: TrackingOption = None) -> None:
    """Point ALIAS at VERSION if it is no regression against the current holder (exit 1 when refused)."""
    from shoal.registry.lifecycle import promote as promote_version

    event = promote_version(_store(tracking_uri), name, version, alias, force, reason)
    gate = (event.get("gate") or {}).get("summary", "no previous holder, no gate")
    forced = " (FORCED past the gate)" if event.get("forced") else ""
    typer.echo(f"{name}@{alias}: {event['from'] or '-'} -> {event['to']}{forced}; gate: {gate}")


@registry_app.command()
def rollback(name: Annotated[str, typer.Argument(help="Registered model name.")], alias: AliasOption = "champion",
             tracking_uri: TrackingOption = None) -> None:
    """Move ALIAS back to the holder before its newest promotion."""
    from shoal.registry.lifecycle import rollback as rollback_alias

    event = rollback_alias(_store(tracking_uri), name, alias)
    typer.echo(f"{name}@{alias}: {event['from']} -> {event['to']} (rolled back)")


@registry_app.command()
def history(name: Annotated[str, typer.Argument(help="Registered model name.")], tracking_uri: TrackingOption = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON.")] = False) -> None:
    """Every alias move: who, when, from, to, why, and the gate's result."""
    events = _store(tracking_uri).history(name)
    if as_json:
        typer.echo(json.dumps(events, indent=2))
        return
    for e in events:
        gate = (e.get("gate") or {}).get("verdict", "-")
        why = f" because {e['reason']!r}" if e.get("reason") else ""
        typer.echo(f"{e['sequence']:>3} {e['when']} {e['who']}: {e['action']} @{e['alias']} {e['from'] or '-'} -> "
                   f"{e['to']}, gate {gate}{' FORCED' if e.get('forced') else ''}{why}")
