"""`shoal train`: prepare data, set up the run folder, resume, train with a live view, plot."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shoal.config import Config
from shoal.data.governance.card import CARD_FILE
from shoal.data.prepare import prepare_dataset
from shoal.errors import CheckpointError
from shoal.hardware import peak_memory_bytes, pick_device
from shoal.io import atomic_write_json, check_can_create_dir, ensure_writable_dir
from shoal.parallel.group import (
    ProcessInfo,
    agree,
    barrier,
    collective_errors,
    destroy_process_group,
    gather_to_main,
    init_process_group,
)
from shoal.train.checkpoint import CheckpointManager, read_facts
from shoal.train.metrics import MetricsLog, expert_load_summary, plot_expert_load, plot_loss, read_metrics
from shoal.train.trainer import Trainer, summarize_throughput


def resume_path(resume: str, checkpoints: CheckpointManager) -> Path | None:
    """"auto": newest valid checkpoint (or none yet); "none": a fresh run; else a checkpoint folder."""
    if resume == "auto":
        return checkpoints.latest_valid()
    if resume == "none":
        if checkpoints.step_dirs():
            raise CheckpointError(f"{checkpoints.folder} already holds checkpoints; continue with --resume auto "
                                  "or start elsewhere with --run-name NAME")
        return None
    return Path(resume)


@contextmanager
def live_view(console: Console, total_steps: int, start_step: int, log_every: int, enabled: bool):
    """A rich progress bar on a terminal; a plain line every `log_every` steps elsewhere (CI logs)."""
    if enabled and console.is_terminal:
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]} | {task.fields[tps]} tok/s | MFU {task.fields[mfu]}"),
                   TimeRemainingColumn()]
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("train", total=total_steps, completed=start_step, loss="-", tps="-", mfu="-")

            def update(r: dict[str, Any]) -> None:
                loss = "nan (skipped)" if r["loss"] is None else f"{r['loss']:.3f}"
                bar.update(task, completed=r["step"], loss=loss, tps=f"{r['tokens_per_second']:,.0f}",
                           mfu=f"{r['mfu']:.1%}")
            yield update
    else:
        def update(r: dict[str, Any]) -> None:
            if r["step"] % log_every == 0 or r["step"] == total_steps:
                loss = "nan (skipped)" if r["loss"] is None else f"{r['loss']:.4f}"
                console.print(f"step {r['step']}/{total_steps}  loss {loss}  {r['tokens_per_second']:,.0f} tok/s  "
                              f"MFU {r['mfu']:.1%}")
        yield update


def _log_to_mlflow(run_dir: Path, config: dict[str, Any], console: Console) -> None:
    """The run in MLflow too, when MLflow is installed; a failure there is reported and does not fail training."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return
    from shoal.registry.tracking import log_training_run

    try:
        run_id = log_training_run(run_dir, config)
        console.print(f"logged to MLflow (experiment shoal-training, run {run_id[:8]})")
    except Exception as e:  # noqa: BLE001 -- the training itself succeeded and is saved
        console.print(f"could not log the run to MLflow: {type(e).__name__}: {str(e).splitlines()[0]}")


def run_training(cfg: Config, resume: str = "auto", console: Console | None = None) -> dict[str, Any]:
    """Train `cfg` in its run folder; returns the summary that is also written to summary.json.

    Under torchrun every process calls this: all of them train and write their checkpoint shards; rank 0 alone
    writes the run folder's other files and talks to the terminal.
    """
    info = init_process_group(pick_device(cfg.train.device), cfg.parallel.timeout_s)
    try:
        with collective_errors(cfg.parallel.timeout_s):
            return _run(cfg, info, resume, console or Console(stderr=True, soft_wrap=True, quiet=not info.is_main))
    finally:
        destroy_process_group()  # the trainer of _run is unreachable by now, so this frees it first


def _resume_point(resume: str, checkpoints: CheckpointManager) -> tuple[Path | None, dict[str, Any] | None]:
    path = resume_path(resume, checkpoints)
    if path is None:
        return None, None
    facts = read_facts(path, verified=resume == "auto")
    if not isinstance(facts.get("trainer"), dict):
        raise CheckpointError(f"checkpoint {path} holds no training state (step, config); it was not written by "
                              "shoal train")
    return path, facts


def _run(cfg: Config, info: ProcessInfo, resume: str, console: Console) -> dict[str, Any]:
    # Every refusal comes before anything is written: the run folder is made only once the data is ready.
    check_can_create_dir(cfg.run_dir)
    checkpoints = CheckpointManager(cfg.run_dir / "checkpoints", cfg.train.keep_checkpoints, warn=console.print,
                                    async_save=cfg.train.async_checkpoint)
    if info.restart > 0:  # torchrun restarted the group after a failure: go on from the last checkpoint
        console.print(f"elastic restart {info.restart}: resuming from the newest valid checkpoint")
        resume = "auto"
    # Rank 0 picks (and verifies) the checkpoint and reads its facts; every rank goes on from the same one.
    start_from, facts = agree(lambda: _resume_point(resume, checkpoints))

    # One process per node prepares the data; the others then find it in the cache (preparing is atomic, so
    # nodes that share a file system cannot clash either).
    if info.local_rank == 0:
        data = prepare_dataset(cfg.data, progress=cfg.logging.progress and info.is_main)
    barrier()
    if info.local_rank != 0:
        data = prepare_dataset(cfg.data, progress=False)
    seq_len = cfg.train.seq_len
    trainer = Trainer(cfg, data.windows("train", seq_len), data.windows("val", seq_len),
                      data.manifest["vocab_size"], data.fingerprint)
    if start_from is not None:
        trainer.check_resumable(facts["trainer"])  # a clear refusal before any tensor is read
        trainer.load_state_dict(checkpoints.load(start_from, like=trainer.state_dict(), verified=True))
        console.print(f"resumed from {start_from} (step {trainer.step})")
        for path in checkpoints.set_aside_after(trainer.step):
            console.print(f"set aside newer checkpoint {path.name}: training goes on from step {trainer.step}")
    run_dir = ensure_writable_dir(cfg.run_dir)

    unigram = data.manifest["unigram_entropy_nats"]
    d = trainer.describe()
    if info.is_main:
        atomic_write_json(run_dir / "config.json", trainer.cfg.to_dict())
        shutil.copyfile(data.tokenizer_path, run_dir / "tokenizer.json")
        if (data.folder / CARD_FILE).is_file():  # the data card travels with the run, then the exported model
            shutil.copyfile(data.folder / CARD_FILE, run_dir / CARD_FILE)
        atomic_write_json(run_dir / "run.json", {**d, "dataset": {
            "folder": str(data.folder), "fingerprint": data.fingerprint, "tokens": data.manifest["tokens"],
            "unigram_entropy_nats": unigram, "card_sha256": data.manifest.get("card_sha256"),
            "filters": {reason: r["documents"] for reason, r in data.manifest.get("filters", {}).get("removed", {}).items()}}})
    where = f"{d['world_size']} processes ({d['layout']}) on {d['device'].split(':')[0]}" if d["world_size"] > 1 \
        else d["device"]
    console.print(f"model: {d['parameters'] / 1e6:.2f}M parameters, {cfg.train.steps} steps of "
                  f"{cfg.train.batch_tokens:,} tokens on {where} in {d['dtype']}; run folder {run_dir}")

    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=trainer.step if start_from else None) \
        if info.is_main else None

    def on_step(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(record)
        if "val_loss" in record:
            console.print(f"step {record['step']}: validation loss {record['val_loss']:.4f}")

    status = "completed"
    try:
        if trainer.step >= cfg.train.steps:
            console.print(f"run already complete at step {trainer.step}; raise train.steps to train further")
        else:
            with live_view(console, cfg.train.steps, trainer.step, cfg.logging.log_every,
                           cfg.logging.progress and info.is_main) as view:
                status = trainer.fit(on_step, lambda: checkpoints.save(trainer.step, trainer.state_dict()), view)
    finally:
        try:
            checkpoints.wait()  # a background save finishes (or fails) before the process group goes
        finally:
            if metrics is not None:
                metrics.close()

    peak_memory = gather_to_main(peak_memory_bytes(trainer.device)) or []  # on rank 0, which writes the summary
    summary = {"status": status, "step": trainer.step, "run_dir": str(run_dir), "world_size": d["world_size"],
               "layout": d["layout"], "peak_memory_bytes_per_rank": peak_memory,
               "checkpoint": str(checkpoints.step_dirs()[-1]) if checkpoints.step_dirs() else None}
    if info.is_main:
        records = read_metrics(run_dir / "metrics.jsonl")
        val = [r["val_loss"] for r in records if "val_loss" in r]
        train = [r["loss"] for r in records if r.get("loss") is not None]
        summary.update(train_loss=train[-1] if train else None, val_loss=val[-1] if val else None,
                       unigram_entropy_nats=unigram, **summarize_throughput(records))
        expert_load = expert_load_summary(records)
        if expert_load is not None:
            summary["expert_load"] = expert_load
            console.print(f"expert load over the last {expert_load['steps']} steps: max/mean "
                          f"{expert_load['max_mean_ratio']:.2f} (1 = even; per MoE layer: "
                          f"{', '.join(f'{r:.2f}' for r in expert_load['max_mean_ratio_per_layer'])})")
        if cfg.logging.plot:
            plot = plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png", reference=unigram)
            summary["plot"] = str(plot) if plot else None
            if expert_load is not None:
                summary["expert_plot"] = str(plot_expert_load(run_dir / "metrics.jsonl", run_dir / "experts.png"))
        atomic_write_json(run_dir / "summary.json", summary)
        if cfg.logging.mlflow:
            _log_to_mlflow(run_dir, trainer.cfg.to_dict(), console)
    if status == "interrupted":
        summary["signal"] = trainer.stop_signal
    return summary
