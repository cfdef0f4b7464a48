"""What a server serves, and swapping it while it runs.

A Backend is one model behind the API: its scheduler (engine thread and queue), tokenizer, the name clients send,
the version it is (NAME/VERSION from the registry), and its drift monitor. Serving holds the current one. A request
acquires the backend once, when it arrives, and keeps it to its last token; swap() points new requests at another
backend, and the old one is closed only after the last request that acquired it has finished. So a swap fails no
request, and no response mixes two models.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from shoal.serve.drift import DriftMonitor
from shoal.serve.scheduler import Scheduler

log = logging.getLogger("shoal.serve")


@dataclass
class Backend:
    scheduler: Scheduler
    tokenizer: Tokenizer
    name: str  # what clients send as "model"
    version: str  # what responses and /metrics report: NAME/VERSION for a registry model
    monitor: DriftMonitor | None = None
    active: int = 0  # requests that acquired it and have not finished
    idle: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def close(self) -> None:
        self.scheduler.close()
        if self.monitor is not None:
            self.monitor.close()


class Serving:
    def __init__(self, backend: Backend) -> None:
        self.current = backend
        self.swaps = 0
        self._lock = threading.Lock()
        self.on_swap: list = []  # callables(old, new), e.g. the metrics

    def acquire(self) -> Backend:
        with self._lock:
            backend = self.current
            with backend.idle:
                backend.active += 1
            return backend

    @staticmethod
    def release(backend: Backend) -> None:
        with backend.idle:
            backend.active -= 1
            backend.idle.notify_all()

    def swap(self, new: Backend) -> Backend:
        """Serve `new` from now on; the old backend finishes its requests in the background, then closes."""
        with self._lock:
            old, self.current = self.current, new
            self.swaps += 1
        threading.Thread(target=self._retire, args=(old,), name="shoal-retire", daemon=True).start()
        for listener in self.on_swap:
            try:
                listener(old, new)
            except Exception:  # a metric that failed to update must not undo a swap that happened
                log.exception("a swap listener failed")
        log.warning("now serving %s (was %s)", new.version, old.version)
        return old

    @staticmethod
    def _retire(old: Backend) -> None:
        with old.idle:
            old.idle.wait_for(lambda: old.active == 0)
        old.close()

    def close(self) -> None:
        self.current.close()
