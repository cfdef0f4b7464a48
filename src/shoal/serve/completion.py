"""From engine tokens to response text: the hand-over from the engine thread to the event loop, and the text of one
completion (incremental decoding, stop sequences, usage)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from tokenizers import Tokenizer

from shoal.serve.metrics import ServerMetrics


class Dispatcher:
    """Posts events from the engine thread into the requests' asyncio queues with one loop wake-up for everything
    posted since the last one (a decode step gives one token to every running request), rather than one per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: deque[tuple[asyncio.Queue, object]] = deque()
        self._scheduled = False

    def post(self, queue: asyncio.Queue, event: object) -> None:
        """From any thread."""
        self._pending.append((queue, event))
        if not self._scheduled:  # a wake-up already scheduled will deliver this event too
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # Reset before draining: an event posted from here on schedules a new wake-up, so none is left behind.
        self._scheduled = False
        while self._pending:
            queue, event = self._pending.popleft()
            queue.put_nowait(event)


class Completion:
    """The text of one request. Tokens are decoded as they come only when the text is needed as it grows (streaming
    or stop sequences), and then incrementally: byte-level BPE text is the concatenation of its pieces, so only the
    tokens since the last whole character are decoded. The first stop sequence ends the text (and cancels the rest
    of the generation); a suffix that could still grow into one is held back until it is decided."""

    def __init__(self, tokenizer: Tokenizer, prompt: list[int], stops: list[str], cancel: Callable[[], None],
                 arrived: float, deadline: float, stream: bool) -> None:
        self.tokenizer, self.prompt, self.stops, self.cancel = tokenizer, prompt, stops, cancel
        self.arrived, self.deadline = arrived, deadline
        self.incremental = stream or bool(stops)
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.outcome: object = None
        self.first_token_at: float | None = None
        self.timed_out = False
        self._undecoded: list[int] = []  # tokens since the last whole character
        self._held = ""  # text that could still become a stop sequence

    def record(self, metrics: ServerMetrics) -> None:
        elapsed = time.monotonic() - self.arrived
        metrics.latency.observe(elapsed)
        metrics.generated_tokens.inc(len(self.tokens))
        if self.first_token_at is not None:
            metrics.first_token.observe(self.first_token_at - self.arrived)
            metrics.tokens_per_second.observe(len(self.tokens) / max(elapsed, 1e-9))

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.tokens),
                "total_tokens": len(self.prompt) + len(self.tokens)}

    async def run(self, events: asyncio.Queue) -> AsyncIterator[str]:
        """Yield each new piece of text as it becomes final; events that arrived together give one piece."""
        while True:
            try:
                left = self.deadline - time.monotonic()
                if left <= 0:  # also when events are waiting: a slow loop must not outlive the deadline
                    raise asyncio.TimeoutError
                first = await asyncio.wait_for(events.get(), left)
            except asyncio.TimeoutError:
                self.timed_out, self.finish_reason = True, "length"
                self.cancel()
                return
            batch = [first]
            while not events.empty():
                batch.append(events.get_nowait())
            pieces, finished = [], False
            for kind, value in batch:
                if kind == "finish":
                    pieces.append(self._finish(value))
                    finished = True
                    break
                if self.finish_reason is None:  # else: tokens that raced the cancellation
                    pieces.append(self._accept(value))
            piece = "".join(pieces)
            if piece and not isinstance(self.outcome, Exception):
                yield piece
            if finished:
                return

    def _accept(self, token: int) -> str:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.tokens.append(token)
        if not self.incremental:
            return ""
        self._undecoded.append(token)
        piece = self.tokenizer.decode(self._undecoded)
        if piece.endswith("\ufffd"):
            return ""  # an unfinished character: wait for its next byte
        self._undecoded.clear()
        return self._release(self._held + piece)

    def _finish(self, outcome: object) -> str:
        self.outcome = outcome
        if self.finish_reason is not None:
            return ""
        self.finish_reason = "stop" if outcome in ("stop", "cancelled") else "length"
        if not self.incremental:
            self.text = self.tokenizer.decode(self.tokens)
            return ""
        rest, self._undecoded = self._held + self.tokenizer.decode(self._undecoded), []
        return self._release(rest, final=True)

    def _release(self, text: str, final: bool = False) -> str:
        """Append what of `text` is final to the completion's text and return it."""
        hit = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        self._held = ""
        if hit >= 0:
            text, self.finish_reason = text[:hit], "stop"
            self.cancel()
        elif not final:
            keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])),
                       default=0)
            text, self._held = text[:len(text) - keep], text[len(text) - keep:]
        self.text += text
        return text
