"""Continuous batching for a server: one background thread owns the engine and runs it; requests arrive from any
thread, wait in a bounded queue, join the running batch as soon as a row is free, and hear their tokens through a
callback. A request that waits longer than the queue timeout is refused, as is one that finds the queue full.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.serve.engine import Engine, Request, Sequence


class Busy(Exception):
    """The queue is full (HTTP 429) or a request waited longer than the queue timeout (HTTP 503)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Ticket:
    """A submitted request: `on_token(token)` for each new token, then `on_finish(reason)` once ("stop", "length",
    "cancelled", or a Busy / exception instance when it could not run)."""
    request: Request
    on_token: Callable[[int], None]
    on_finish: Callable[[object], None]
    id: int = 0
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    sequence: Sequence | None = None


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int = 64, queue_timeout: float = 30.0,
                 on_admit: Callable[[Sequence], None] | None = None) -> None:
        self.engine = engine
        self.on_admit = on_admit  # hears each sequence once its prompt is prefilled (drift monitoring)
        self.max_queue, self.queue_timeout = max_queue, queue_timeout
        self._waiting: deque[Ticket] = deque()
        self._running: dict[int, Ticket] = {}  # by slot
        self._wake = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="shoal-engine", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._running)

    def submit(self, request: Request, on_token: Callable[[int], None], on_finish: Callable[[object], None]) -> Ticket:
        """Queue `request` (checked first: ValueError for one that can never run; Busy when the queue is full)."""
        self.engine.check(request)
        ticket = Ticket(request, _guarded(on_token), _guarded(on_finish), next(self._ids))
        with self._wake:
            if self._stopping:
                raise Busy("the server is shutting down", 503)
            if len(self._waiting) >= self.max_queue:
                raise Busy(f"the server is busy: {len(self._waiting)} requests are already waiting; retry later", 429)
            self._waiting.append(ticket)
            self._wake.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop generating for `ticket` (a client went away, or a stop sequence was reached); its row frees up."""
        with self._wake:
            ticket.cancelled = True
            self._wake.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let the queued and running ones finish, then stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._running or self._stopping):
                    self._wake.wait()
                if self._stopping and not (self._waiting or self._running):
                    return
                admitted, refused = self._take_waiting()
            # Prefills and callbacks run outside the lock, so that submit() never waits for the model.
            for ticket, outcome in refused:
                ticket.on_finish(outcome)
            for ticket in admitted:
                try:
                    ticket.sequence = self.engine.add(ticket.request)
                except Exception as e:  # noqa: BLE001 -- the request fails, the server goes on
                    ticket.on_finish(e)
                    continue
                self._running[ticket.sequence.slot] = ticket
                if self.on_admit is not None:
                    _guarded(self.on_admit)(ticket.sequence)
            self._retire_cancelled()
            if self._running:
                self._step()

    def _take_waiting(self) -> tuple[list[Ticket], list[tuple[Ticket, object]]]:
        """Waiting tickets that get a free row now, and those that must be refused (expired or cancelled while
        waiting); called under the lock."""
        admitted, refused = [], []
        now = time.monotonic()
        free = self.engine.free_slots
        while self._waiting and (len(admitted) < free or now - self._waiting[0].submitted > self.queue_timeout):
            ticket = self._waiting.popleft()
            if ticket.cancelled:
                refused.append((ticket, "cancelled"))
            elif now - ticket.submitted > self.queue_timeout:
                refused.append((ticket, Busy(f"waited {self.queue_timeout:g} s for a free slot; retry later", 503)))
            else:
                admitted.append(ticket)
        return admitted, refused

    def _retire_cancelled(self) -> None:
        for slot, ticket in list(self._running.items()):
            if ticket.cancelled:
                self.engine.remove(ticket.sequence)
                del self._running[slot]
                ticket.on_finish("cancelled")

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as e:  # noqa: BLE001 -- fail the running requests, keep serving
            for ticket in self._running.values():
                self.engine.remove(ticket.sequence)
                ticket.on_finish(e)
            self._running.clear()
            return
        for sequence, token in events:
            ticket = self._running[sequence.slot]
            if token is not None:
                ticket.on_token(token)
            if sequence.done:
                del self._running[sequence.slot]
                ticket.on_finish(sequence.finish_reason)


def _guarded(callback: Callable[[Any], None]) -> Callable[[Any], None]:
    """`callback`, with its exceptions logged rather than raised: a failing listener (a closed event loop at shutdown,
    a monitor) must never stop the engine thread that every other request depends on."""
    def call(value: Any) -> None:
        try:
            callback(value)
        except Exception:  # noqa: BLE001
            logging.getLogger(__name__).exception("a request's listener failed")
    return call
