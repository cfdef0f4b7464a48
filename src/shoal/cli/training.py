"""Commands that make models: train, data prepare / audit, export, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.app import ConfigOption, SetOption, _load, app, data_app


@app.command()
def train(config: ConfigOption = "tiny", overrides: SetOption = None,
          resume: Annotated[str, typer.Option(help="auto (newest valid checkpoint), none, or a checkpoint folder.")] = "auto",
          run_name: Annotated[str | None, typer.Option(help="Run folder name under train.out_dir.")] = None,
          nproc: Annotated[int, typer.Option(help="Processes on this node (one per GPU); > 1 launches torchrun.")] = 1,
          nnodes: Annotated[int, typer.Option(help="Nodes taking part (multi-node needs --rdzv).")] = 1,
          node_rank: Annotated[int, typer.Option(help="This node's index, 0 .. nnodes - 1.")] = 0,
          rdzv: Annotated[str, typer.Option(help="HOST:PORT where the nodes meet (c10d rendezvous), same on all nodes.")] = "",
          rdzv_id: Annotated[str, typer.Option(help="Name of this job at the rendezvous, same on all nodes.")] = "shoal",
          max_restarts: Annotated[int, typer.Option(help="Restart the group up to K times after a failure, "
                                                          "resuming from the last checkpoint.")] = 0) -> None:
    """Train a model; Ctrl-C or SIGTERM saves a checkpoint before stopping."""
    from rich.console import Console

    from shoal.parallel.group import launched_by_torchrun, process_info
    from shoal.parallel.launch import LaunchSpec, exec_torchrun
    from shoal.parallel.mesh import resolve_layout
    from shoal.train.checkpoint import CheckpointManager
    from shoal.train.run import resume_path, run_training

    all_overrides = (overrides or []) + ([f"train.run_name={json.dumps(run_name)}"] if run_name else [])
    cfg = _load(config, all_overrides)  # refuse a bad config here, before any process is started
    spec = LaunchSpec(nproc, nnodes, node_rank, rdzv, rdzv_id, max_restarts)
    spec.validate()
    if spec.needed and not launched_by_torchrun():
        # What would stop every worker alike is refused here, before any process starts.
        resolve_layout(cfg.parallel, spec.nproc * spec.nnodes)
        if resume == "none":  # (a restart would otherwise turn it into "auto")
            resume_path(resume, CheckpointManager(cfg.run_dir / "checkpoints"))
        exec_torchrun(spec, ["train", "--config", config, "--resume", resume,
                             *[arg for o in all_overrides for arg in ("--set", o)]])
    console = Console(stderr=True, soft_wrap=True, quiet=not process_info().is_main)  # rank 0 speaks for the run
    summary = run_training(cfg, resume=resume, console=console)
    if summary["status"] == "interrupted":
        console.print(f"interrupted at step {summary['step']}; checkpoint saved in {summary['checkpoint']}; "
                      "run the same command to resume")
        # Under torchrun a worker that stopped as asked exits 0: a failure code would make torchrun restart the
        # group (--max-restarts) and train on. torchrun itself exits non-zero when it was the one signalled.
        raise typer.Exit(0 if launched_by_torchrun() else 128 + summary["signal"])
    if not process_info().is_main:
        return
    val = summary["val_loss"]
    console.print(f"done: step {summary['step']}, validation loss {val:.4f} nats/token (unigram entropy "
                  f"{summary['unigram_entropy_nats']:.4f}); outputs in {summary['run_dir']}" if val is not None
                  else f"done: step {summary['step']}; outputs in {summary['run_dir']}")


@data_app.command("prepare")
def data_prepare(config: ConfigOption = "tiny", overrides: SetOption = None) -> None:
    """Tokenize the configured sources into shards (cached: unchanged inputs do no work)."""
    from shoal.data.prepare import prepare_dataset

    cfg = _load(config, overrides)
    prepared = prepare_dataset(cfg.data, progress=cfg.logging.progress)
    m = prepared.manifest
    removed = {reason: r["documents"] for reason, r in m.get("filters", {}).get("removed", {}).items() if r["documents"]}
    typer.echo(f"dataset {prepared.fingerprint[:16]}: {m['documents']['train']:,} + {m['documents']['val']:,} documents, "
               f"{m['tokens']['train']:,} train + {m['tokens']['val']:,} validation tokens, vocab {m['vocab_size']}; "
               + (f"removed: {', '.join(f'{n} {reason}' for reason, n in removed.items())}; " if removed else "")
               + f"card and shards in {prepared.folder}")


@data_app.command("audit")
def data_audit(sources: Annotated[list[str], typer.Argument(help="Folders, files or \"stdlib\" to audit.")],
               eval_sources: Annotated[list[str] | None, typer.Option(
                   "--eval", help="Evaluation sources to check for contamination (repeatable).")] = None,
               out: Annotated[Path, typer.Option(help="Report folder.")] = Path("audit"),
               glob: Annotated[str, typer.Option(help="Files picked inside folder sources.")] = "**/*",
               license_: Annotated[list[str] | None, typer.Option(
                   "--license", help="Declare a source's license: SOURCE=SPDX (repeatable).")] = None,
               workers: Annotated[int, typer.Option(help="Processes for the per-document work (0: all cores).")] = 0,
               progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True) -> None:
    """Find duplicates, personal data, license problems, contamination and suspicious documents; write a report."""
    from shoal.data.governance.audit import audit

    report = audit(sources, out, eval_sources or [], glob=glob, declared=license_ or [], workers=workers,
                   progress=progress)
    r, dup, pii = report["read"], report["duplicates"], report["personal_data"]
    contamination = report["contamination"]
    typer.echo(f"{r['documents']:,} documents ({r['bytes'] / 1e6:.1f} MB, {sum(r['skipped'].values())} skipped): "
               f"{dup['exact_documents'] + dup['near_documents']} duplicates, {pii['documents_with_findings']} documents "
               f"with personal data or secrets, {report['outliers']['documents']} outliers, {len(report['triggers'])} "
               f"suspected trigger phrases"
               + (f", {contamination['contaminated']} of {contamination['eval_documents']} evaluation documents "
                  "contaminated" if contamination else "") + f"; report in {out}/report.md")


@app.command("export")
def export(run: Annotated[Path, typer.Argument(help="Run folder.")],
           out: Annotated[Path | None, typer.Option(help="Bundle folder (default: RUN/bundle).")] = None) -> None:
    """Write the inference bundle: model.safetensors, tokenizer.json, config.json (+ checksums)."""
    from shoal.bundle import export_bundle

    path = export_bundle(run, out or run / "bundle")
    typer.echo(f"bundle written to {path}")


@app.command("config")
def show_config(config: ConfigOption = "tiny", overrides: SetOption = None) -> None:
    """Print the resolved config as JSON (after presets and overrides)."""
    typer.echo(json.dumps(_load(config, overrides).to_dict(), indent=2))
