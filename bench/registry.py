"""Deploying a new version to a live server: shoal's hot swap (`serve models:/NAME@champion --follow-alias`, then
`registry promote`) against the plain way (stop the server, start one on the new version), in the same run. Prints
JSON.

Both phases run 8 client threads sending completions (16 new tokens) without pause for 6 s before and 8 s after
the deploy. For each: requests, failed requests (an HTTP error or a refused connection), latency p50 / p95 before,
around (2 s after the deploy) and after, and the time from the deploy to the first answer from the new version.

    python bench/registry.py [--model RUN_OR_BUNDLE]
The model defaults to the demo run (runs/tiny) when it exists, else the tiny preset with random weights.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

CLIENTS, BEFORE, AFTER, WINDOW = 8, 6.0, 8.0, 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, uri: str, follow: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "shoal.cli", "serve", model, "--tracking-uri", uri, "--no-drift", "--port",
               str(port), "--max-batch", str(CLIENTS)] + (["--follow-alias", "--follow-interval", "0.5"] if follow else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(server.stderr.read())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def load(port: int, deploy, new_version: str) -> dict:
    """Clients against the port; `deploy()` at BEFORE seconds; the figures of the phase."""
    results, stop = [], threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    r = http.post(f"http://127.0.0.1:{port}/v1/completions",
                                  json={"prompt": "def main():", "max_tokens": 16, "temperature": 0})
                    ok, version = r.status_code == 200, r.json().get("model_version") if r.status_code == 200 else None
                except httpx.HTTPError:
                    ok, version = False, None
                    time.sleep(0.05)
                results.append((start, time.monotonic() - start, ok, version))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(BEFORE)
    deployed = time.monotonic()
    deploy()
    time.sleep(AFTER)
    stop.set()
    for thread in threads:
        thread.join()
    first_new = min((s + d for s, d, ok, v in results if ok and v == new_version), default=None)

    def latency(rows) -> dict:
        seconds = [d for _, d, ok, _ in rows if ok]
        return {"requests": len(rows), "p50_ms": round(1000 * float(np.percentile(seconds, 50)), 1) if seconds else None,
                "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 1) if seconds else None}

    return {"requests": len(results), "failed": sum(not ok for _, _, ok, _ in results),
            "seconds_to_new_version": round(first_new - deployed, 2) if first_new else None,
            "before": latency([r for r in results if r[0] < deployed]),
            "around_deploy": latency([r for r in results if deployed <= r[0] < deployed + WINDOW]),
            "after": latency([r for r in results if r[0] >= deployed + WINDOW]),
            "seconds": round(time.monotonic() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    args = parser.parse_args()
    from shoal.bundle import load_model, save_bundle
    from shoal.registry.lifecycle import promote
    from shoal.registry.store import Store
    from shoal.registry.versions import register

    folder = Path(tempfile.mkdtemp(prefix="shoal-bench-registry-"))
    source = Path(args.model or "runs/tiny")
    if not (source / "checkpoints").is_dir() and not (source / "manifest.json").is_file():
        sys.path.insert(0, str(Path(__file__).parent))
        from compress import source_bundle

        source, _ = source_bundle(None, folder)
    loaded = load_model(source, "cpu")
    copy = save_bundle(loaded.model.to(torch.bfloat16), loaded.tokenizer, folder / "v2", {"copy": "bf16"},
                       loaded.info.get("config"))
    store = Store(f"sqlite:///{folder / 'mlflow.db'}")
    for bundle in (source, copy):
        register(store, bundle, "bench")
    promote(store, "bench", 1)

    port = free_port()
    server = start_server("models:/bench@champion", port, store.uri, follow=True)
    try:
        hot = load(port, lambda: promote(store, "bench", 2, force=True, reason="benchmark"), "bench/2")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    promote(store, "bench", 1, force=True, reason="benchmark reset")

    port = free_port()
    servers = [start_server("models:/bench/1", port, store.uri, follow=False)]

    def restart() -> None:  # what a deploy without hot swap does: stop the old server, start the new one
        servers[0].send_signal(signal.SIGTERM)
        servers[0].wait(timeout=60)
        servers[0] = start_server("models:/bench/2", port, store.uri, follow=False)

    try:
        cold = load(port, restart, "bench/2")
    finally:
        servers[0].send_signal(signal.SIGTERM)
        servers[0].wait(timeout=60)
    print(json.dumps({"benchmark": "registry", "model": f"{loaded.model.num_params() / 1e6:.2f}M parameters "
                      f"({source})", "clients": CLIENTS, "threads": torch.get_num_threads(),
                      "hot_swap": hot, "restart": cold}, indent=2))


if __name__ == "__main__":
    main()
