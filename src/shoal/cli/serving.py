"""Commands that run models: generate, serve, monitor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli.app import app
from shoal.errors import ShoalError


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
def serve(model: Annotated[str, typer.Argument(help="Run folder, bundle, or registry model: models:/NAME@ALIAS, "
                                                    "models:/NAME/VERSION.")],
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
          follow_alias: Annotated[bool, typer.Option(help="models:/NAME@ALIAS: swap to the alias's new holder when "
                                                          "it moves, without failing a request.")] = False,
          follow_interval: Annotated[float, typer.Option(help="Seconds between looks at the alias.")] = 10.0,
          tracking_uri: Annotated[str | None, typer.Option(help="Registry (MLflow tracking URI) of a models:/ "
                                                                "reference.")] = None,
          ) -> None:
    """Serve the model over an OpenAI-compatible HTTP API: /v1/completions, /v1/models, /v1/drift, /healthz, /metrics."""
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
    if follow_alias and not (model.startswith("models:/") and "@" in model):
        raise ShoalError("--follow-alias follows a registry alias: serve models:/NAME@ALIAS")
    if follow_interval <= 0:
        raise ShoalError(f"--follow-interval must be > 0 seconds, got {follow_interval}")
    from shoal.serve.decoders import DECODERS

    if decode not in DECODERS:
        raise ShoalError(f"--decode must be one of {', '.join(DECODERS)}, got {decode!r}")
    import uvicorn

    from shoal.serve.backend import Serving
    from shoal.serve.launch import BackendOptions, build_backend, open_model
    from shoal.serve.server import ServerSettings, create_app

    options = BackendOptions(dtype, decode, max_batch, max_queue, queue_timeout, max_prompt_tokens, drift,
                             tuple(drift_reference or ()), drift_window, drift_z)

    def warn(message: str) -> None:
        typer.secho(message, err=True, fg="yellow")

    def backend_of(reference: str):
        return build_backend(*open_model(reference, device, tracking_uri), options, warn)

    serving = Serving(backend_of(model))
    follower = None
    if follow_alias:
        from shoal.registry.follow import AliasFollower
        from shoal.registry.store import Store

        follower = AliasFollower(Store(tracking_uri), model, serving, backend_of, follow_interval).start()
    settings = ServerSettings(keys, rate_limit or None, max_body_bytes, max_prompt_tokens or None, max_tokens,
                              request_timeout)
    try:
        # uvicorn finishes the requests in flight on Ctrl-C / SIGTERM before it returns.
        uvicorn.run(create_app(settings=settings, serving=serving), host=host, port=port, log_level="info")
    finally:
        if follower is not None:
            follower.close()
        serving.close()


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
