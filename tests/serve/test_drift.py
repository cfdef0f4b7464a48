"""Drift monitoring: the statistics by hand, the judge on traffic drawn from the training data (no alarm) and on English
prose (alarm), and the whole path over HTTP: prompts -> prefill surprisal -> windows -> /v1/drift, /metrics and
`shoal monitor`."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pydoc_data.topics import topics

import httpx
import numpy as np
import pytest
import torch

from shoal.bundle import load_model
from shoal.config import ModelConfig
from shoal.data.tokenizer import train_tokenizer
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.drift import DriftMonitor, WindowJudge, js_divergence, ks_distance, length_buckets, psi, psi_bins
from shoal.serve.drift_profile import build_profile, random_windows, run_reference, server_profile
from shoal.serve.engine import Engine, Request, prompt_loss
from shoal.serve.scheduler import Scheduler
from shoal.serve.server import create_app

from ..cli.test_cli import assert_one_line_error
from ..conftest import shoal
from .test_server import running

PROMPT = 48  # the longest prompt the profile expects (the test model's context is 64)


def test_statistics_by_hand():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert js_divergence(p, p) == 0
    assert js_divergence(p, np.array([0.0, 0.0, 0.5, 0.5])) == pytest.approx(1.0)
    # JS([1,0], [.5,.5]) = 1/2 (1 log2(1/.75)) + 1/2 (.5 log2(.5/.75) + .5 log2(.5/.25))
    expected = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(2))
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5))
    # Ten bins of equal training mass: the most frequent tokens first, the rarest (and unseen) last.
    frequencies = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0])
    assert psi_bins(frequencies, 10).tolist() == [0, 3, 5, 6, 7, 8, 9, 9, 9]
    assert ks_distance(np.array([0.2, 0.5, 1.0]), np.array([0.1, 0.9, 1.0])) == pytest.approx(0.4)
    # Half-octaves below a cap of 64: 64..46 share the top bucket (12), 45..33 the next, 32..23 the next, 1 the bottom.
    assert length_buckets(np.array([64, 63, 46, 45, 33, 32, 1]), 64).tolist() == [12, 12, 12, 11, 11, 10, 0]


@pytest.fixture(scope="module")
def reference(trained_run):
    loaded = load_model(trained_run)
    description, training, validation = run_reference(loaded)
    return loaded, training, build_profile(loaded.model, training, validation, description, PROMPT)


def training_prompts(training: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """Traffic drawn from the training distribution: random windows of the training documents."""
    pieces = random_windows(training, PROMPT, n, np.random.default_rng(seed))
    return [pieces.values[i, :pieces.lengths[i]].astype(np.int64) for i in range(n)]


def english_prompts(tokenizer, n: int, seed: int) -> list[np.ndarray]:
    """English prose: the interpreter's own help topics, cut the same way."""
    documents = [np.array(tokenizer.encode(text, add_special_tokens=False).ids) for text in topics.values()]
    pieces = random_windows(documents, PROMPT, n, np.random.default_rng(seed))
    return [pieces.values[i, :pieces.lengths[i]].astype(np.int64) for i in range(n)]


@torch.inference_mode()
def surprisal(model, prompt: np.ndarray) -> float:
    ids = torch.as_tensor(prompt)[None]
    return float(torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:], reduction="sum"))


def test_training_traffic_stays_below_the_alarm_and_english_prose_trips_it(reference):
    loaded, training, profile = reference
    judge = WindowJudge(profile, resamples=200, z_alarm=4.0)
    calm = []
    for seed in range(3):
        prompts = training_prompts(training, 20, seed=10 + seed)
        result = judge.judge(prompts, [surprisal(loaded.model, p) for p in prompts], np.random.default_rng(seed))
        assert not result["alarm"], result["checks"]
        calm.append(result["checks"])
    prose = english_prompts(loaded.tokenizer, 20, seed=1)
    result = judge.judge(prose, [surprisal(loaded.model, p) for p in prose], np.random.default_rng(0))
    assert result["alarm"] and "tokens_js" in result["alarms"], result["checks"]
    assert result["checks"]["tokens_js"]["value"] > max(c["tokens_js"]["value"] for c in calm)


def test_prompt_loss_in_chunks_is_the_whole_loss():
    logits, prompt = torch.randn(50, 30), torch.randint(0, 30, (50,))
    whole = float(torch.nn.functional.cross_entropy(logits[:-1], prompt[1:], reduction="sum"))
    assert prompt_loss(logits, prompt, chunk=7) == pytest.approx(whole, rel=1e-5)
    assert prompt_loss(logits[:1], prompt[:1]) == 0.0


def test_the_engine_scores_prompts_at_prefill(reference):
    loaded, training, _ = reference
    engine = Engine(loaded.model, max_batch=2, score_prompts=True)
    prompt = training_prompts(training, 1, seed=3)[0]
    sequence = engine.add(Request(prompt.tolist(), max_tokens=1))
    assert sequence.prompt_nats == pytest.approx(surprisal(loaded.model, prompt), rel=1e-5)


def test_drift_over_http_metrics_and_the_monitor_command(reference, tmp_path):
    loaded, training, profile = reference
    monitor = DriftMonitor(profile, window=20, z_alarm=4.0)
    scheduler = Scheduler(Engine(loaded.model, max_batch=4, score_prompts=True),
                          on_admit=lambda s: monitor.observe(s.request.prompt, s.prompt_nats))
    tokenizer = loaded.tokenizer
    with running(create_app(scheduler, tokenizer, "tiny", drift=monitor)) as url:
        def send(prompt: np.ndarray) -> int:
            body = {"prompt": tokenizer.decode(prompt.tolist()), "max_tokens": 1, "temperature": 0}
            return httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, training_prompts(training, 40, seed=7))) == {200}
            monitor.settle()
            assert set(pool.map(send, english_prompts(tokenizer, 20, seed=2))) == {200}
        monitor.settle()
        report = httpx.get(f"{url}/v1/drift", timeout=30).json()
        assert [w["alarm"] for w in report["history"]] == [False, False, True], report["history"]
        assert report["alarm"] and report["windows_judged"] == 3 and report["current"] is None
        scrape = httpx.get(f"{url}/metrics", timeout=30).text
        assert "shoal_drift_alarm 1.0" in scrape and 'shoal_drift_z{check="tokens_js"}' in scrape

        # The window filling now is judged from 5 prompts on (and again only when more arrive).
        with ThreadPoolExecutor(5) as pool:
            assert set(pool.map(send, training_prompts(training, 5, seed=8))) == {200}
        filling = httpx.get(f"{url}/v1/drift", timeout=30).json()
        assert filling["current_prompts"] == 5 and filling["current"]["prompts"] == 5
        assert filling["current"] == httpx.get(f"{url}/v1/drift", timeout=30).json()["current"]

        out = tmp_path / "monitor"
        watched = shoal("monitor", url, "--out", str(out))
        assert watched.returncode == 0, watched.stderr
        assert "window 2: 20 prompts" in watched.stdout and "DRIFT in the latest window" in watched.stdout
        assert "3 windows judged, 1 with an alarm" in watched.stdout
        assert json.loads((out / "drift.json").read_text())["history"][-1]["alarm"]
        assert (out / "drift.png").stat().st_size > 10_000
        assert shoal("monitor", url, "--out", str(out), "--fail-on-drift").returncode == 1
    scheduler.close()


def test_a_server_without_drift_and_bad_monitor_targets(tmp_path):
    tokenizer = train_tokenizer(iter(["def f(x):\n    return x\n"] * 20), 300)
    model = Transformer(resolve_model_config(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32),
                                             tokenizer.get_vocab_size())).eval()
    scheduler = Scheduler(Engine(model, max_batch=1))
    with running(create_app(scheduler, tokenizer, "plain")) as url:
        reply = httpx.get(f"{url}/v1/drift", timeout=30)
        assert reply.status_code == 404 and "drift monitoring is off" in reply.json()["error"]["message"]
        out = tmp_path / "monitor"
        assert_one_line_error(shoal("monitor", url, "--out", str(out)), "answered 404", "drift monitoring is off")
    scheduler.close()
    assert_one_line_error(shoal("monitor", "http://127.0.0.1:9", "--out", str(out)), "cannot read")
    assert_one_line_error(shoal("monitor", "ftp://example", "--out", str(out)), "not an http(s) URL")
    assert not out.exists()


def test_a_reference_from_named_documents(reference, tmp_path):
    loaded, _, _ = reference
    log = tmp_path / "prompts.jsonl"
    log.write_text("".join(json.dumps({"text": f"def handler_{i}(event):\n    return event[{i}]\n"}) + "\n"
                           for i in range(30)))
    profile = server_profile(loaded, loaded.model, [str(log)], PROMPT, progress=False)
    assert profile.source == str(log) and profile.pieces.n_documents == 30 and profile.scored.n_documents == 30
    assert profile.pieces.lengths.max() <= PROMPT and profile.mean_surprisal > 0
    # Only the logged prompts' tokens have any frequency.
    logged = {t for line in log.read_text().splitlines()
              for t in loaded.tokenizer.encode(json.loads(line)["text"], add_special_tokens=False).ids}
    assert set(np.flatnonzero(profile.frequencies)) == logged
