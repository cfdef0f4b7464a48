"""`shoal serve models:/NAME@ALIAS --follow-alias`: watch the alias and swap the server to each new holder.

Every `interval` seconds the alias is resolved; when it points at another version, that version is fetched (every
file checked), loaded and built into a backend while the old one keeps serving, then swapped in. Requests in flight
finish on the model they started with. A version that fails to load (a tampered artifact, a model this device
cannot run) is reported and the server keeps serving what it had; it is tried again a minute later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shoal.registry.store import Store
from shoal.serve.backend import Backend, Serving

log = logging.getLogger("shoal.serve")
RETRY = 60.0  # seconds before a version that failed to load is tried again


class AliasFollower:
    def __init__(self, store: Store, reference: str, serving: Serving, load: Callable[[str], Backend],
                 interval: float = 10.0) -> None:
        self.store, self.serving, self.load, self.interval = store, serving, load, interval
        self.name, _, self.alias = reference.removeprefix("models:/").partition("@")
        self.failed: dict[str, float] = {}  # versions that would not load, and when: retried after RETRY seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoal-follow-alias", daemon=True)

    def start(self) -> AliasFollower:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 60)

    def check(self) -> None:
        """One look at the alias; swaps when it moved to a version that loads."""
        holder = self.store.resolve(f"{self.name}@{self.alias}")
        label = f"{holder.name}/{holder.version}"
        if label == self.serving.current.version or time.monotonic() - self.failed.get(label, -RETRY) < RETRY:
            return
        try:
            backend = self.load(f"models:/{label}")
        except Exception as e:  # noqa: BLE001 -- keep serving the current model whatever went wrong
            self.failed[label] = time.monotonic()
            log.error("not swapping to %s: %s", label, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        self.serving.swap(backend)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as e:  # noqa: BLE001 -- a registry that is briefly unreachable is retried next time
                log.error("could not read %s@%s: %s", self.name, self.alias, str(e).splitlines()[0])
