"""The real server on a loopback port, over HTTP: completions equal the engine's greedy tokens, streaming gives the
same text, concurrent clients of different lengths all get their own right answer, stop sequences cut, and bad
requests are 4xx JSON, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.config import ModelConfig
from shoal.data.tokenizer import eot_id, train_tokenizer
from shoal.errors import ShoalError
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.engine import Engine
from shoal.serve.generate import generate
from shoal.serve.scheduler import Scheduler
from shoal.serve.security import load_api_keys
from shoal.serve.server import ServerSettings, create_app

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
    prompts = [("def add(a, b):" * (1 + i % 4))[: 5 + 3 * (i % 17)] for i in range(32)]
    lengths = [4 + (i * 5) % 17 for i in range(32)]

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
    (json.dumps({"prompt": "x", "seed": 2**64}).encode(), 422),
    (json.dumps({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}).encode(), 422),  # at most 4, as OpenAI
    (json.dumps({"prompt": "x", "stop": "s" * 257}).encode(), 422),
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
    assert_one_line_error(shoal("serve", str(trained_run), "--api-key-file", str(trained_run / "none")), "cannot read")
    assert_one_line_error(shoal("serve", str(trained_run), "--drift-reference", str(trained_run / "none")), "none")
    assert_one_line_error(shoal("serve", str(trained_run), "--decode", "graphs"), "needs a CUDA device")


def test_the_official_openai_client(server, model, tokenizer):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    text, finish = expected_text(model, tokenizer, "x = [1,", 10)
    reply = client.completions.create(model="tiny-test", prompt="x = [1,", max_tokens=10, temperature=0)
    assert reply.choices[0].text == text and reply.choices[0].finish_reason == finish
    stream = client.completions.create(model="tiny-test", prompt="x = [1,", max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == text
    assert [m.id for m in client.models.list()] == ["tiny-test"]


@contextlib.contextmanager
def running(app):
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{instance.servers[0].sockets[0].getsockname()[1]}"
    finally:
        instance.should_exit = True
        thread.join(10)


ALICE, BOB = "a" * 20 + "alice-key", "b" * 20 + "bob-key"


def test_keys_rate_limits_caps_and_metrics(model, tokenizer, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text(f"# team keys\nalice:{ALICE}\n\nbob:{BOB}\n")
    secure = ServerSettings(api_keys=load_api_keys(key_file), rate_limit=3, max_tokens=8, max_body_bytes=4096)
    scheduler = Scheduler(Engine(model, max_batch=2))
    ok = {"prompt": "def", "max_tokens": 4, "temperature": 0}
    with running(create_app(scheduler, tokenizer, "secure", secure)) as url:
        post = functools.partial(httpx.post, f"{url}/v1/completions", timeout=30)
        anonymous = post(json=ok)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert post(json=ok, headers={"Authorization": "Bearer " + ALICE[:-1] + "x"}).status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        alice = {"Authorization": f"Bearer {ALICE}"}
        assert post(json=ok, headers=alice).status_code == 200
        assert post(json={**ok, "max_tokens": 9}, headers=alice).status_code == 400  # over the cap
        assert post(content=b"{" + b" " * 5000 + b"}", headers={**alice, "content-type": "application/json"}
                    ).status_code == 413
        chunks = (b" " * 1000 for _ in range(6))  # no declared length: counted while it arrives
        assert post(content=chunks, headers={**alice, "content-type": "application/json"}).status_code == 413
        bob = {"Authorization": f"Bearer {BOB}"}
        statuses = [post(json=ok, headers=bob).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]  # 3 a minute, per key
        limited = post(json=ok, headers=bob)
        assert int(limited.headers["retry-after"]) >= 1 and "rate limit" in limited.json()["error"]["message"]
        text = httpx.get(f"{url}/metrics").text
    scheduler.close()
    assert 'shoal_requests_total{status="401"} 3.0' in text and 'shoal_requests_total{status="200"} 4.0' in text, text
    assert 'shoal_requests_total{status="429"} 2.0' in text and "shoal_queue_depth 0.0" in text, text
    assert "shoal_request_seconds_count 4.0" in text and "shoal_generated_tokens_total" in text


def test_request_timeout_and_key_files(model, tokenizer, tmp_path):
    scheduler = Scheduler(Engine(model, max_batch=1))
    with running(create_app(scheduler, tokenizer, "slow", ServerSettings(request_timeout=0.0001))) as url:
        reply = httpx.post(f"{url}/v1/completions", json={"prompt": "def", "max_tokens": 50}, timeout=30)
    scheduler.close()
    assert reply.status_code == 504 and "longer than" in reply.json()["error"]["message"]
    for text, words in (("short\n", "at least 16 characters"), ("# nothing\n", "holds no keys")):
        (tmp_path / "keys").write_text(text)
        with pytest.raises(ShoalError, match=words):
            load_api_keys(tmp_path / "keys")
    with pytest.raises(ShoalError, match="cannot read"):
        load_api_keys(tmp_path / "missing")


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                           | st.text(max_size=40), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "model", "n", "user"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSON_VALUES, st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON_VALUES,
                                                   max_size=6)),
       raw=st.binary(max_size=40))
def test_fuzzed_bodies_never_get_a_500(server, body, raw):
    """Any JSON (any types in the schema's fields, unknown fields, any nesting) and any bytes: 4xx or 200."""
    if isinstance(body, dict) and body.get("max_tokens") and isinstance(body["max_tokens"], int):
        body["max_tokens"] = min(body["max_tokens"], 4)  # keep the valid ones quick
    for content in (json.dumps(body, allow_nan=True).encode(), raw):
        reply = httpx.post(f"{server}/v1/completions", content=content, headers={"content-type": "application/json"},
                           timeout=30)
        assert reply.status_code < 500, (content, reply.text)
        if reply.status_code != 200 or not (isinstance(body, dict) and body.get("stream") is True):
            assert "error" in reply.json() or "choices" in reply.json()


def request_schema(url: str) -> dict:
    """The completions body as the server's own OpenAPI document describes it."""
    document = httpx.get(f"{url}/openapi.json", timeout=30).json()
    body = document["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert "$ref" not in json.dumps(schema) and sorted(schema["properties"]) == sorted(FIELDS)
    return schema


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values a JSON schema allows, for the keywords the completions schema uses (a new keyword fails loudly)."""
    known = {"type", "anyOf", "items", "minLength", "maxLength", "maxItems", "minimum", "maximum", "exclusiveMinimum",
             "properties", "required", "additionalProperties", "default", "title", "description"}
    assert set(schema) <= known, f"a schema keyword this strategy does not know: {set(schema) - known}"
    if "anyOf" in schema:
        return st.one_of(*(from_schema(option) for option in schema["anyOf"]))
    kind = schema["type"]
    if kind == "object":
        required = {k: from_schema(schema["properties"][k]) for k in schema.get("required", [])}
        optional = {k: from_schema(v) for k, v in schema["properties"].items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(low, schema.get("maximum"), exclude_min="exclusiveMinimum" in schema, allow_nan=False)
    if kind == "array":
        return st.lists(from_schema(schema["items"]), max_size=schema.get("maxItems", 6))
    return {"string": st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 60), 60)),
            "boolean": st.booleans(),
            "null": st.none()}[kind]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_bodies_the_openapi_schema_allows_are_served(server, data):
    """Whatever the published schema allows is never refused as malformed (422) and never fails (5xx)."""
    body = data.draw(from_schema(request_schema(server)))
    if isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(body["max_tokens"], 4)  # keep them quick; still valid
    if data.draw(st.booleans()):
        body["model"] = "tiny-test"  # most bodies should reach the model, not stop at another model's name
    reply = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    assert reply.status_code in (200, 400, 404), (body, reply.text)
    if reply.status_code == 200 and body.get("stream"):
        assert reply.text.rstrip().endswith("data: [DONE]") and '"error"' not in reply.text, reply.text
    elif reply.status_code == 200:
        assert reply.json()["usage"]["completion_tokens"] <= body.get("max_tokens", 16)
