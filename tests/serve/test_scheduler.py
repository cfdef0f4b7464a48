"""The scheduler: a full queue is refused (429), a request that waits too long is refused (503), a cancelled
request frees its row for the next one, and closing finishes what was accepted."""

from __future__ import annotations

import threading

import pytest
import torch

from shoal.config import ModelConfig
from shoal.models.transformer import Transformer, resolve_model_config
from shoal.serve.engine import Engine, Request
from shoal.serve.generate import generate
from shoal.serve.scheduler import Busy, Scheduler


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
                                           init_std=0.3), 64)
    return Transformer(cfg).eval()


class Listener:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.outcome: object = None
        self.started, self.finished = threading.Event(), threading.Event()

    def on_token(self, token: int) -> None:
        self.tokens.append(token)
        self.started.set()

    def on_finish(self, outcome: object) -> None:
        self.outcome = outcome
        self.finished.set()


def submit(scheduler: Scheduler, request: Request) -> Listener:
    listener = Listener()
    listener.ticket = scheduler.submit(request, listener.on_token, listener.on_finish)
    return listener


def test_queue_limits_cancel_and_close(model):
    scheduler = Scheduler(Engine(model, max_batch=1), max_queue=1, queue_timeout=60)
    long = submit(scheduler, Request([1, 2, 3], max_tokens=200))
    assert long.started.wait(30)  # it holds the only row
    waiting = submit(scheduler, Request([4, 5], max_tokens=5))
    with pytest.raises(Busy, match="busy") as refused:
        scheduler.submit(Request([6], 5), lambda t: None, lambda r: None)
    assert refused.value.status == 429
    scheduler.cancel(long.ticket)  # the row goes to the waiting request
    assert long.finished.wait(30) and long.outcome == "cancelled" and len(long.tokens) < 200
    assert waiting.finished.wait(30) and waiting.outcome == "length"
    assert waiting.tokens == list(generate(model, [4, 5], 5, temperature=0, use_cache=False))
    last = submit(scheduler, Request([7, 8], max_tokens=30))
    scheduler.close()  # finishes the accepted request before stopping
    assert last.finished.is_set() and last.outcome == "length" and len(last.tokens) == 30
    with pytest.raises(Busy, match="shutting down"):
        scheduler.submit(Request([1], 1), lambda t: None, lambda r: None)


def test_a_request_that_waits_too_long_is_refused(model):
    scheduler = Scheduler(Engine(model, max_batch=1), max_queue=4, queue_timeout=0.05)
    long = submit(scheduler, Request([1, 2, 3], max_tokens=200))
    assert long.started.wait(30)
    late = submit(scheduler, Request([4], max_tokens=5))
    assert late.finished.wait(30)
    assert isinstance(late.outcome, Busy) and late.outcome.status == 503 and late.tokens == []
    with pytest.raises(ValueError, match="empty"):
        scheduler.submit(Request([], 5), lambda t: None, lambda r: None)
    scheduler.close()
    assert long.outcome == "length" and len(long.tokens) == 200


def test_a_failing_listener_does_not_stop_the_engine(model):
    def broken(_: object) -> None:
        raise RuntimeError("the client's event loop is gone")

    scheduler = Scheduler(Engine(model, max_batch=2), on_admit=broken)
    scheduler.submit(Request([1, 2, 3], 5), broken, broken)
    healthy = Listener()
    scheduler.submit(Request([4, 5], 5), healthy.on_token, healthy.on_finish)
    assert healthy.finished.wait(30) and healthy.outcome == "length"
    assert healthy.tokens == list(generate(model, [4, 5], 5, temperature=0))
    scheduler.close()
