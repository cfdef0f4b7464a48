"""The real server on a loopback port, over HTTP: completions equal the engine's greedy tokens, streaming gives the
same text, concurrent clients of different lengths all get their own right answer, stop sequences cut, and bad
requests are 4xx JSON, never a 500."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from shoal.config import ModelConfig
from shoal.data.tokenizer import eot_id, train_tokenizer
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.engine import Engine
from shoal.serve.generate import generate
from shoal.serve.scheduler import Scheduler
from shoal.serve.server import create_app

from ..cli.test_cli import assert_one_line_error
from ..conftest import shoal

TEXTS = ["def add(a, b):\n    return a + b\n", "print('hello world')\n", "for i in range(10):\n    x = i * 2\n"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(TEXTS * 30), 300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                                           init_std=0.3), tokenizer.get_vocab_size())
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def server(model, tokenizer):
    """uvicorn serving the app in a thread on a free loopback port; yields its base URL."""
    scheduler = Scheduler(Engine(model, max_batch=4), max_queue=64, queue_timeout=30)
    config = uvicorn.Config(create_app(scheduler, tokenizer, "tiny-test"), host="127.0.0.1", port=0,
                            log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.02)
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(10)
    scheduler.close()


def expected_text(model, tokenizer, prompt: str, max_tokens: int) -> tuple[str, str]:
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    new = list(generate(model, ids, max_tokens, temperature=0, use_cache=False, stop_token=eot_id(tokenizer)))
    return tokenizer.decode(new), "length" if len(new) == max_tokens else "stop"


def test_completion_models_and_health(server, model, tokenizer):
    body = {"prompt": "def add(", "max_tokens": 12, "temperature": 0}
    reply = httpx.post(f"{server}/v1/completions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    text, finish = expected_text(model, tokenizer, "def add(", 12)
    assert data["object"] == "text_completion" and data["model"] == "tiny-test"
    assert data["choices"][0]["text"] == text and data["choices"][0]["finish_reason"] == finish
    assert data["usage"]["prompt_tokens"] == len(tokenizer.encode("def add(", add_special_tokens=False).ids)
    assert httpx.get(f"{server}/v1/models").json()["data"][0]["id"] == "tiny-test"
    assert httpx.get(f"{server}/healthz").json()["status"] == "ok"


def test_streaming_gives_the_same_text(server):
    body = {"prompt": "for i in", "max_tokens": 20, "temperature": 0}
    whole = httpx.post(f"{server}/v1/completions", json=body, timeout=30).json()["choices"][0]
    pieces, finish = [], None
    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True}, timeout=30) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        pieces.append(choice["text"])
        finish = choice["finish_reason"] or finish
    assert "".join(pieces) == whole["text"] and finish == whole["finish_reason"]


def test_concurrent_clients_each_get_their_own_answer(server, model, tokenizer):
    prompts = [("def add(a, b):" * (1 + i % 3))[: 5 + 3 * i] for i in range(16)]
    lengths = [4 + (i * 5) % 17 for i in range(16)]

    async def ask(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
        reply = await client.post(f"{server}/v1/completions",
                                  json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        assert reply.status_code == 200, reply.text
        return reply.json()["choices"][0]

    async def everyone() -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(ask(client, p, n) for p, n in zip(prompts, lengths)))

    for prompt, n, choice in zip(prompts, lengths, asyncio.run(everyone())):
        assert (choice["text"], choice["finish_reason"]) == expected_text(model, tokenizer, prompt, n)


def test_stop_sequences_cut_the_text(server, model, tokenizer):
    full, _ = expected_text(model, tokenizer, "print(", 30)
    stop = full[3:5]
    assert stop and stop in full
    reply = httpx.post(f"{server}/v1/completions", json={"prompt": "print(", "max_tokens": 30, "temperature": 0,
                                                         "stop": [stop]}, timeout=30).json()
    assert reply["choices"][0]["text"] == full[:full.find(stop)]
    assert reply["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status", [
    (b"{not json", 422), (b"[]", 422), (json.dumps({"prompt": 5}).encode(), 422),
    (json.dumps({"prompt": ""}).encode(), 422), (json.dumps({"prompt": "x", "max_tokens": -1}).encode(), 422),
    (json.dumps({"prompt": "x", "temperature": "hot"}).encode(), 422),
    (json.dumps({"prompt": "x", "unknown_field": 1}).encode(), 422),
    (json.dumps({"prompt": "x " * 200}).encode(), 400),  # longer than the 64-token context
    (json.dumps({"prompt": "x", "model": "gpt-9"}).encode(), 404)])
def test_bad_requests_are_json_errors(server, body, status):
    reply = httpx.post(f"{server}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shoal_serve_command(trained_run):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "shoal.cli", "serve", str(trained_run), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                           json={"prompt": "import", "max_tokens": 5, "temperature": 0}, timeout=30)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 5
    finally:
        process.send_signal(signal.SIGTERM)  # a graceful stop
        _, stderr = process.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises the signal so that a supervisor sees how it ended.
    assert process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in stderr, stderr
    assert_one_line_error(shoal("serve", str(trained_run), "--host", "0.0.0.0"), "refusing to serve on 0.0.0.0")


def test_the_official_openai_client(server, model, tokenizer):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    text, finish = expected_text(model, tokenizer, "x = [1,", 10)
    reply = client.completions.create(model="tiny-test", prompt="x = [1,", max_tokens=10, temperature=0)
    assert reply.choices[0].text == text and reply.choices[0].finish_reason == finish
    stream = client.completions.create(model="tiny-test", prompt="x = [1,", max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == text
    assert [m.id for m in client.models.list()] == ["tiny-test"]
