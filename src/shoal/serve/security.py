"""API keys and per-key rate limits for the server.

Keys live in a file, one per line (`name:key`, or just `key`; blank lines and `#` comments are skipped), and are
compared in constant time. A token bucket per key allows `rate` requests per minute with bursts of up to `rate`.
"""

from __future__ import annotations

import hmac
import threading
import time
from pathlib import Path

from shoal.errors import ShoalError

MIN_KEY_LENGTH = 16


def load_api_keys(path: str | Path) -> dict[str, str]:
    """{key: name} from an API-key file; one-line errors for a missing, empty or weak file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ShoalError(f"cannot read the API-key file {path}: {getattr(e, 'strerror', None) or e}") from None
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, key = line.rpartition(":")
        key = key.strip()
        if len(key) < MIN_KEY_LENGTH:
            raise ShoalError(f"{path}:{number}: an API key must have at least {MIN_KEY_LENGTH} characters")
        keys[key] = name.strip() or f"key{len(keys) + 1}"
    if not keys:
        raise ShoalError(f"the API-key file {path} holds no keys")
    return keys


def match_key(keys: dict[str, str], presented: str) -> str | None:
    """The name of the key `presented` matches, comparing against every key in constant time."""
    found = None
    for key, name in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = name
    return found


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute, bursts up to `per_minute`."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0 when the request may go ahead, else the seconds to wait before the next one would."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
