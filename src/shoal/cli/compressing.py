"""The compress command: quantize, prune, or sweep variants."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.app import app
from shoal.errors import ShoalError


@app.command()
def compress(model: Annotated[Path, typer.Argument(help="Run folder or bundle to compress.")],
             quantize: Annotated[str | None, typer.Option(help="int8-wo, int8-dyn, int4-wo or fp8 (GPU).")] = None,
             group_size: Annotated[int | None, typer.Option(help="int4-wo: weights per scale (32, 64, 128, 256; "
                                                                 "default: what a QAT run trained for, else 32).")] = None,
             prune: Annotated[str | None, typer.Option(
                 help="magnitude or 2:4 (zeros), channels or heads (smaller matrices).")] = None,
             sparsity: Annotated[float, typer.Option(
                 help="Share of weights, channels or heads pruned (2:4: always half).")] = 0.5,
             prune_scope: Annotated[str, typer.Option(help="magnitude: global or per layer.")] = "global",
             recover_steps: Annotated[int, typer.Option(help="Fine-tune this many steps on the training data after "
                                                            "pruning, simulating the quantization (QAT).")] = 0,
             recover_lr: Annotated[float | None, typer.Option(help="Peak learning rate of the recovery (default: a "
                                                                   "tenth of training's).")] = None,
             data: Annotated[list[str] | None, typer.Option(
                 help="Calibration text for channels and heads (default: a run's validation split).")] = None,
             device: Annotated[str, typer.Option(help="Where the bundle will run: auto, cpu or cuda.")] = "auto",
             bf16: Annotated[bool, typer.Option(help="Store a pruned-only result in bf16.")] = False,
             sweep: Annotated[bool, typer.Option(help="Build and measure a set of variants; recommend one per "
                                                      "target (report in --out).")] = False,
             max_loss: Annotated[float, typer.Option(help="--sweep: bits per byte a variant may lose (share).")] = 0.01,
             hardware: Annotated[str | None, typer.Option(help="--sweep: price-table row of this machine.")] = None,
             out: Annotated[Path | None, typer.Option(help="Bundle (or --sweep report) folder; default: beside "
                                                           "MODEL.")] = None,
             ) -> None:
    """Prune and/or quantize a model into a new bundle that loads and serves like any other, with its lineage."""
    from shoal.compress.make import compress_model, qat_method

    if sweep:
        from shoal.compress.sweep import run_sweep
        from shoal.compress.sweep_report import write_sweep

        if quantize or prune or recover_steps or not 0 < max_loss < 1:
            raise ShoalError("--sweep builds its own variants (no --quantize / --prune / --recover-steps) and needs "
                             "0 < --max-loss < 1")
        target = out or model.resolve().with_name(f"{model.resolve().name}-sweep")
        result = run_sweep(model, target, data or [], max_loss, hardware, device=device)
        write_sweep(result, target)
        typer.echo("\n".join(f"{goal}: {r['summary']}" for goal, r in result["recommendations"].items())
                   + f"\nreport in {target}/sweep.md, variants in {target}/variants/")
        return
    pruned = prune and ("sparse24" if prune == "2:4" else f"{prune}{round(sparsity * 100)}")
    trained_for = qat_method(model) if not (quantize or prune) else None
    label = "-".join(x for x in (pruned, quantize or (trained_for or [None])[0]) if x) or "compressed"
    target = out or model.resolve().with_name(f"{model.resolve().name}-{label}")
    summary = compress_model(model, target, quantize, group_size, prune, sparsity, prune_scope, data or [], device,
                             "bf16" if bf16 else "keep", recover_steps, recover_lr)
    before, after = summary["parameters"]
    for step in summary["steps"]:
        if step["method"] == "recover":
            qat = f" with {step['settings']['qat']} simulated (QAT)" if step["settings"]["qat"] else ""
            losses = " -> ".join("-" if loss is None else f"{loss:.4f}" for loss in step["val_loss"])
            typer.echo(f"recovery: {step['settings']['steps']} steps{qat}, validation loss{' (simulated)' if qat else ''}"
                       f" {losses}")
    typer.echo(f"{' + '.join(s['method'] for s in summary['steps'])}: {before:,} -> {after:,} parameters, weights "
               f"{summary['parent_bytes'] / 1e6:.1f} MB in {summary['dtype']} -> {summary['bytes'] / 1e6:.1f} MB; "
               f"bundle written to {target}")
