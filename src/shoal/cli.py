"""The `shoal` command: parses arguments and calls the modules, nothing more."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from shoal.errors import ShoalError

app = typer.Typer(help="Train transformer language models, export them and sample from them.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Prepare and inspect training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOption = Annotated[str, typer.Option("--config", "-c", help="Preset name (tiny, gpt2-124m, ...) or a TOML file.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set train.lr=3e-4 (repeatable).")]


def _load(config: str, overrides: list[str] | None):
    from shoal.config import load_config

    return load_config(config, overrides or [])


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


@app.command("eval")
def evaluate(model: Annotated[Path, typer.Argument(help="Run folder or exported bundle.")],
             data: Annotated[list[str] | None, typer.Option(
                 help="Documents to evaluate on (repeatable; default: a run's validation split).")] = None,
             suite: Annotated[str, typer.Option(help="default: quality, calibration, robustness, efficiency and cost; "
                                                     "quick: quality and calibration.")] = "default",
             hardware: Annotated[str | None, typer.Option(
                 help="Price-table row of the machine running this (default: guessed from the device).")] = None,
             prices: Annotated[Path | None, typer.Option(help="Your own hardware price table (TOML).")] = None,
             adversarial_tries: Annotated[int, typer.Option(help="Seeds per perturbation the adversary tries.")] = 2,
             dtype: Annotated[str, typer.Option(help="Precision of the speed measurements: auto (bf16 where faster), "
                                                     "fp32, bf16.")] = "auto",
             out: Annotated[Path, typer.Option(help="Report folder.")] = Path("eval")) -> None:
    """Quality, calibration, robustness, speed and cost of a model on held-out documents; writes a report."""
    from shoal.bundle import load_model
    from shoal.eval.data import evaluation_documents
    from shoal.eval.report import write_report
    from shoal.eval.suite import check_options, run_suite
    from shoal.io import check_can_create_dir

    check_options(suite, hardware, prices, adversarial_tries, dtype)  # before the model loads
    check_can_create_dir(out)
    loaded = load_model(model)
    description, documents = evaluation_documents(loaded, data or [])
    summary = run_suite(loaded, list(documents), suite, hardware, prices, adversarial_tries, dtype, progress=True)
    write_report(summary, {k: v for k, v in loaded.info.items() if k != "config"} | {"source": str(model)},
                 description, out)
    q = summary["quality"]
    typer.echo(f"{summary['documents']:,} documents, {summary['tokens']:,} tokens: loss {q['loss']['value']:.4f}, "
               f"bits/byte {q['bits_per_byte']['value']:.4f}, top-1 {q['top1_accuracy']['value']:.1%}, ECE "
               f"{summary['calibration']['ece_equal_width']:.4f}"
               + (f", worst perturbation {summary['robustness'].get('worst')}" if "robustness" in summary else "")
               + (f", {summary['efficiency']['decode_tokens_per_second']:,.0f} tokens/s decoding"
                  if "efficiency" in summary else "") + f"; report in {out}/report.md")


@app.command()
def compare(candidate: Annotated[Path, typer.Argument(help="The new model: run folder or bundle.")],
            baseline: Annotated[Path, typer.Argument(help="The model it must not be worse than.")],
            data: Annotated[list[str] | None, typer.Option(
                help="Documents to compare on (repeatable; default: the baseline run's validation split).")] = None,
            fail_on: Annotated[str, typer.Option(
                help="Comma-separated metrics that gate the verdict.")] = "bits_per_byte,top1_accuracy",
            margin: Annotated[list[str] | None, typer.Option(
                help="How much worse a metric may be: METRIC=VALUE (repeatable), e.g. bits_per_byte=0.02.")] = None,
            min_documents: Annotated[int, typer.Option(help="Fewer documents than this is always inconclusive.")] = 10,
            resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
            out: Annotated[Path, typer.Option(help="Report folder.")] = Path("compare")) -> None:
    """Paired comparison on the same documents; exit 0 pass, 1 regression, 2 inconclusive, 3 bad input."""
    try:
        verdict = _compare(candidate, baseline, data or [], fail_on, margin or [], min_documents, resamples, out)
    except Exception as e:  # noqa: BLE001 -- whatever went wrong, CI must not read it as a verdict
        message = str(e) if isinstance(e, ShoalError) else f"{type(e).__name__}: {e}"
        typer.secho(f"error: {message}", err=True, fg="red")
        raise typer.Exit(3) from None
    VERDICTS_GIVEN.append(verdict)
    raise typer.Exit(VERDICT_EXIT_CODES[verdict])


VERDICT_EXIT_CODES = {"pass": 0, "regression": 1, "inconclusive": 2}
VERDICTS_GIVEN: list[str] = []  # so main() can tell an "inconclusive" exit 2 from a usage error's


def _compare(candidate: Path, baseline: Path, data: list[str], fail_on: str, margins: list[str], min_documents: int,
             resamples: int, out: Path) -> str:
    from shoal.bundle import load_model
    from shoal.data.progress import PhaseProgress
    from shoal.eval.compare_report import write_comparison
    from shoal.eval.data import evaluation_documents
    from shoal.eval.gate import check_comparable, compare_scores, parse_fail_on, parse_margins
    from shoal.eval.scoring import score_documents
    from shoal.io import check_can_create_dir

    gates, margin_values = parse_fail_on(fail_on), parse_margins(margins)
    if min_documents < 1 or resamples < 100:
        raise ShoalError("--min-documents must be at least 1 and --resamples at least 100")
    check_can_create_dir(out)
    base, cand = load_model(baseline), load_model(candidate)
    same_tokenizer = json.loads(cand.tokenizer.to_str()) == json.loads(base.tokenizer.to_str())
    check_comparable(gates, same_tokenizer)
    description, documents = evaluation_documents(base, data)
    documents = list(documents)  # the same documents for both models
    total = sum(len(text.encode("utf-8")) for _, text in documents)
    with PhaseProgress(True) as bar:
        scores = []
        for name, loaded in (("candidate", cand), ("baseline", base)):
            bar.phase(f"scoring the {name}", total)
            scores.append(score_documents(loaded.model, loaded.tokenizer, documents, on_bytes=bar.advance))
    result = compare_scores(*scores, gates, margin_values,
                            same_tokenizer=same_tokenizer,
                            resamples=resamples, min_documents=min_documents)
    write_comparison(result, str(candidate), str(baseline), description, out)
    for name in result["fail_on"]:
        m = result["metrics"][name]
        low, high = m["harm_ci"]
        typer.echo(f"{name}: {m['baseline']:.4f} -> {m['candidate']:.4f}, harm {m['harm']:+.4f} "
                   f"[{low:+.4f}, {high:+.4f}] vs margin {m['margin']:g}: {m['verdict']}")
    typer.echo(f"{result['verdict'].upper()} on {result['documents']} documents; report in {out}/compare.md")
    return result["verdict"]


@app.command()
def generate(model: Annotated[Path, typer.Argument(help="Run folder or exported bundle.")],
             prompt: Annotated[str, typer.Argument(help="Text to continue.")],
             max_tokens: int = 200, temperature: float = 0.8,
             top_k: Annotated[int, typer.Option(help="Keep the k most likely tokens (0: all).")] = 50,
             top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1.0: off).")] = 0.95,
             seed: int | None = None,
             cache: Annotated[bool, typer.Option(help="Use the KV cache (--no-cache recomputes every step).")] = True) -> None:
    """Continue PROMPT with a trained model, streaming tokens to the terminal."""
    from shoal.bundle import load_model
    from shoal.data.tokenizer import eot_id
    from shoal.serve.generate import generate as generate_tokens

    loaded = load_model(model)
    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer.encode(prompt).ids
    prompt_text = tokenizer.decode(prompt_ids)
    new_ids: list[int] = []
    shown = ""
    try:  # generate() checks the prompt and settings when called, before any token
        stream = generate_tokens(loaded.model, prompt_ids, max_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, seed=seed, use_cache=cache, stop_token=eot_id(tokenizer))
    except ValueError as e:
        raise ShoalError(f"cannot generate: {e}") from None
    sys.stdout.write(prompt)
    for token in stream:
        new_ids.append(token)
        # Decode the whole continuation each time: a character can span several byte-level tokens.
        text = tokenizer.decode(prompt_ids + new_ids)[len(prompt_text):]
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")


@app.command()
def serve(model: Annotated[Path, typer.Argument(help="Run folder or exported bundle.")],
          host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          api_key_file: Annotated[Path | None, typer.Option(
              help="File of API keys, one per line (name:key); clients send Authorization: Bearer <key>.")] = None,
          rate_limit: Annotated[float, typer.Option(help="Requests per minute per key (0: unlimited).")] = 0.0,
          max_batch: Annotated[int, typer.Option(help="Sequences decoded together (KV-cache rows).")] = 8,
          max_queue: Annotated[int, typer.Option(help="Requests that may wait for a row; more get 429.")] = 64,
          queue_timeout: Annotated[float, typer.Option(help="Seconds a request may wait for a row; then 503.")] = 30.0,
          request_timeout: Annotated[float, typer.Option(help="Seconds from arrival to the last token; then 504.")] = 300.0,
          max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
          max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt in tokens (0: the model's context).")] = 0,
          max_body_bytes: Annotated[int, typer.Option(help="Largest request body; more gets 413.")] = 1 << 20,
          dtype: Annotated[str, typer.Option(help="auto (bf16 where faster), fp32 or bf16.")] = "auto",
          device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu or cuda.")] = "auto",
          decode: Annotated[str, typer.Option(help="Decode step: auto (CUDA graphs on a GPU, else eager), eager, "
                                                   "compile (torch.compile), graphs.")] = "auto",
          insecure: Annotated[bool, typer.Option(help="Allow a non-loopback address without API keys.")] = False,
          drift: Annotated[bool, typer.Option(help="Compare the prompts with the training data (GET /v1/drift).")] = True,
          drift_reference: Annotated[list[str] | None, typer.Option(
              help="Reference documents for drift (repeatable; default: the run's own training data).")] = None,
          drift_window: Annotated[int, typer.Option(help="Prompts per judged drift window.")] = 100,
          drift_z: Annotated[float, typer.Option(help="Alarm when a drift check is this many null sds out.")] = 4.0,
          ) -> None:
    """Serve the model over an OpenAI-compatible HTTP API: POST /v1/completions, GET /v1/models, /healthz, /metrics."""
    import ipaddress

    from shoal.serve.security import load_api_keys

    keys = load_api_keys(api_key_file) if api_key_file else None
    if keys is None and not insecure:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ShoalError(f"refusing to serve on {host} without API keys; pass --api-key-file FILE (or --insecure "
                             "behind a proxy that authenticates)")
    if (max_batch < 1 or max_queue < 0 or queue_timeout <= 0 or request_timeout <= 0 or max_tokens < 1
            or max_prompt_tokens < 0 or max_body_bytes < 1 or rate_limit < 0 or not 0 < port < 65536
            or drift_window < 5 or drift_z <= 0):
        raise ShoalError("need --max-batch, --max-tokens and --max-body-bytes >= 1, positive timeouts and --drift-z, "
                         "non-negative --max-queue, --max-prompt-tokens and --rate-limit, --drift-window >= 5, and a "
                         "port in 1..65535")
    if dtype not in ("auto", "fp32", "bf16"):
        raise ShoalError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    from shoal.serve.decoders import DECODERS, pick_decoder

    if decode not in DECODERS:
        raise ShoalError(f"--decode must be one of {', '.join(DECODERS)}, got {decode!r}")
    import uvicorn

    from shoal.bundle import load_model
    from shoal.hardware import pick_dtype
    from shoal.serve.engine import Engine
    from shoal.serve.scheduler import Scheduler
    from shoal.serve.server import ServerSettings, create_app

    loaded = load_model(model, device)
    weights = loaded.model.tok_embeddings.weight
    network = loaded.model.to(pick_dtype(dtype, weights.device))
    try:
        pick_decoder(decode, network)
    except ValueError as e:
        raise ShoalError(str(e)) from None
    engine = Engine(network, max_batch, decoder=decode)
    monitor = _drift_monitor(loaded, network, drift_reference or [], max_prompt_tokens or engine.max_len,
                             drift_window, drift_z) if drift else None
    engine.score_prompts = monitor is not None
    scheduler = Scheduler(engine, max_queue, queue_timeout,
                          on_admit=(lambda s: monitor.observe(s.request.prompt, s.prompt_nats)) if monitor else None)
    settings = ServerSettings(keys, rate_limit or None, max_body_bytes, max_prompt_tokens or None, max_tokens,
                              request_timeout)
    try:
        # uvicorn finishes the requests in flight on Ctrl-C / SIGTERM before it returns.
        uvicorn.run(create_app(scheduler, loaded.tokenizer, model.resolve().name, settings, monitor), host=host,
                    port=port, log_level="info")
    finally:
        scheduler.close()
        if monitor is not None:
            monitor.close()


def _drift_monitor(loaded, model, reference: list[str], max_prompt: int, window: int, z: float):
    """The drift monitor, or None (with a warning) when a run's data is gone and no reference was named."""
    from shoal.serve.drift import DriftMonitor
    from shoal.serve.drift_profile import server_profile

    try:
        profile = server_profile(loaded, model, reference, max_prompt)
    except ShoalError as e:
        if reference:
            raise
        typer.secho(f"warning: drift monitoring is off: {e}", err=True, fg="yellow")
        return None
    return DriftMonitor(profile, window, z)


@app.command()
def monitor(url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000")],
            api_key: Annotated[str | None, typer.Option(envvar="SHOAL_API_KEY", show_envvar=True,
                                                        help="Key for a server with keys (better in the variable).")] = None,
            out: Annotated[Path, typer.Option(help="Folder for drift.json and drift.png.")] = Path("monitor"),
            fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when the latest window drifted.")] = False) -> None:
    """Print a server's drift report (its traffic against the training data) and plot it over time."""
    from shoal.serve.monitor import fetch_drift, render_drift, write_monitor

    report = fetch_drift(url, api_key)
    write_monitor(report, out)
    typer.echo(render_drift(report) + f"\nreport in {out}/drift.json, plot in {out}/drift.png")
    if fail_on_drift and report["alarm"]:
        raise typer.Exit(1)


@app.command()
def compress(model: Annotated[Path, typer.Argument(help="Run folder or bundle to compress.")],
             quantize: Annotated[str | None, typer.Option(help="int8-wo, int8-dyn, int4-wo or fp8 (GPU).")] = None,
             group_size: Annotated[int, typer.Option(help="int4-wo: weights per scale (32, 64, 128, 256).")] = 32,
             prune: Annotated[str | None, typer.Option(help="magnitude (zeros) or channels (smaller matrices).")] = None,
             sparsity: Annotated[float, typer.Option(help="Share of weights (or channels) pruned.")] = 0.5,
             prune_scope: Annotated[str, typer.Option(help="magnitude: global or per layer.")] = "global",
             data: Annotated[list[str] | None, typer.Option(
                 help="Calibration text for channels (default: a run's validation split).")] = None,
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
    from shoal.compress.make import compress_model

    if sweep:
        from shoal.compress.sweep import run_sweep
        from shoal.compress.sweep_report import write_sweep

        if quantize or prune or not 0 < max_loss < 1:
            raise ShoalError("--sweep builds its own variants (no --quantize / --prune) and needs 0 < --max-loss < 1")
        target = out or model.with_name(f"{model.resolve().name}-sweep")
        result = run_sweep(model, target, data or [], max_loss, hardware, device=device)
        write_sweep(result, target)
        typer.echo("\n".join(f"{goal}: {r['summary']}" for goal, r in result["recommendations"].items())
                   + f"\nreport in {target}/sweep.md, variants in {target}/variants/")
        return
    label = "-".join(x for x in (prune and f"{prune}{round(sparsity * 100)}", quantize) if x) or "compressed"
    target = out or model.with_name(f"{model.resolve().name}-{label}")
    summary = compress_model(model, target, quantize, group_size, prune, sparsity, prune_scope, data or [], device,
                             "bf16" if bf16 else "keep")
    before, after = summary["parameters"]
    typer.echo(f"{' + '.join(s['method'] for s in summary['steps'])}: {before:,} -> {after:,} parameters, weights "
               f"{summary['parent_bytes'] / 1e6:.1f} MB in {summary['dtype']} -> {summary['bytes'] / 1e6:.1f} MB; "
               f"bundle written to {target}")


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


def main() -> None:
    try:
        app()
    except SystemExit as e:
        # A mistyped option exits 2 (click's usage error), which from compare would read as "inconclusive".
        if sys.argv[1:2] == ["compare"] and e.code == 2 and not VERDICTS_GIVEN:
            sys.exit(3)
        raise
    except ShoalError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
