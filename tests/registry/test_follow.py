"""A live `shoal serve models:/NAME@champion --follow-alias` swaps to the alias's new holder while clients keep
sending requests: no request fails, each response names the version that served it, and /metrics follows."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import torch

from shoal.bundle import load_model, save_bundle
from shoal.registry.lifecycle import promote
from shoal.registry.store import Store
from shoal.registry.versions import register

from ..parallel.runs import free_port


def test_a_live_server_follows_the_alias_under_load_without_a_failed_request(trained_run, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    loaded = load_model(trained_run)
    bf16 = save_bundle(loaded.model.to(torch.bfloat16), loaded.tokenizer, tmp_path / "bf16", {"copy": "bf16"},
                       loaded.info["config"])
    for source in (trained_run, bf16):
        register(store, source, "live")
    promote(store, "live", 1)
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "shoal.cli", "serve", "models:/live@champion", "--tracking-uri",
                               store.uri, "--follow-alias", "--follow-interval", "0.2", "--no-drift", "--port",
                               url.rsplit(":", 1)[1], "--max-batch", "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        served, stop = [], threading.Event()

        def client(stream: bool) -> None:
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    r = http.post(f"{url}/v1/completions", json={"prompt": "import ", "max_tokens": 12,
                                                                 "stream": stream})
                    if stream:
                        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                                  if line.startswith("data: {")]
                        ok = r.text.rstrip().endswith("data: [DONE]") and all("error" not in c for c in chunks)
                        served.append((r.status_code if ok else -1, {c["model_version"] for c in chunks}))
                    else:
                        served.append((r.status_code, {r.json().get("model_version")}))

        clients = [threading.Thread(target=client, args=(i % 2 == 1,)) for i in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(1.5)
        promote(store, "live", 2, force=True, reason="swap drill")
        deadline = time.monotonic() + 60
        while not any("live/2" in versions for _, versions in served) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # and keep the load on a while after the swap
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        assert served and all(status == 200 for status, _ in served), [s for s in served if s[0] != 200][:3]
        assert all(len(versions) == 1 for _, versions in served)  # no response mixes two models
        seen = [versions.pop() for _, versions in served]
        assert "live/1" in seen and "live/2" in seen
        metrics = httpx.get(f"{url}/metrics").text
        assert 'shoal_model_version_info{model="live",version="live/2"} 1.0' in metrics
        assert 'version="live/1"' not in metrics and "shoal_model_swaps 1.0" in metrics
        assert httpx.get(f"{url}/healthz").json()["version"] == "live/2"
    finally:
        server.terminate()
        server.wait(timeout=60)
