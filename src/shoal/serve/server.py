"""`shoal serve`: an OpenAI-compatible completions server (FastAPI + uvicorn) over the batching scheduler.

Routes: POST /v1/completions (with `stream: true` as server-sent events), GET /v1/models, GET /healthz.
Bad requests are 400/422 JSON errors in OpenAI's shape, never a 500; a full queue is 429, a queue timeout 503.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from shoal.data.tokenizer import eot_id
from shoal.serve.engine import Request as EngineRequest
from shoal.serve.scheduler import Busy, Scheduler


class CompletionRequest(BaseModel):
    """The fields of OpenAI's /v1/completions that a single-prompt text model can honour (others are refused)."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # an extension, as in vLLM
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    user: str | None = None


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(scheduler: Scheduler, tokenizer: Tokenizer, model_name: str) -> FastAPI:
    app = FastAPI(title="shoal", version="1")
    eot = eot_id(tokenizer)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}" if where else
                              first.get("msg", "invalid request"))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "running": scheduler.batch_size, "waiting": scheduler.queue_depth}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "shoal"}]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> JSONResponse | StreamingResponse:
        if body.model not in (None, model_name):
            return error_response(404, f"model {body.model!r} is not served here; this server serves {model_name!r}",
                                  "not_found_error")
        prompt = tokenizer.encode(body.prompt, add_special_tokens=False).ids
        stops = [body.stop] if isinstance(body.stop, str) else [s for s in body.stop or [] if s]
        request = EngineRequest(prompt, body.max_tokens, body.temperature, body.top_k, body.top_p, body.seed, eot)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        try:
            ticket = scheduler.submit(request, lambda t: loop.call_soon_threadsafe(events.put_nowait, ("token", t)),
                                      lambda r: loop.call_soon_threadsafe(events.put_nowait, ("finish", r)))
        except ValueError as e:
            return error_response(400, str(e))
        except Busy as e:
            return error_response(e.status, str(e), "server_busy")
        completion = _Completion(tokenizer, prompt, stops, lambda: scheduler.cancel(ticket))
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        if body.stream:
            return StreamingResponse(_sse(completion, events, meta), media_type="text/event-stream")
        try:
            async for _ in completion.run(events):
                pass
        except asyncio.CancelledError:
            scheduler.cancel(ticket)
            raise
        if isinstance(completion.outcome, Exception):
            status = completion.outcome.status if isinstance(completion.outcome, Busy) else 500
            return error_response(status, str(completion.outcome), "server_busy" if status != 500 else "server_error")
        return JSONResponse({**meta, "choices": [{"text": completion.text, "index": 0, "logprobs": None,
                                                  "finish_reason": completion.finish_reason}],
                             "usage": completion.usage})

    return app


class _Completion:
    """Turns the token events of one request into text: decodes incrementally (a character may span several byte
    tokens), stops at the first stop sequence (cancelling the rest of the generation) and counts usage."""

    def __init__(self, tokenizer: Tokenizer, prompt: list[int], stops: list[str], cancel: Any) -> None:
        self.tokenizer, self.prompt, self.stops, self.cancel = tokenizer, prompt, stops, cancel
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.outcome: object = None

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.tokens),
                "total_tokens": len(self.prompt) + len(self.tokens)}

    async def run(self, events: asyncio.Queue) -> AsyncIterator[str]:
        """Yield each new piece of text as it becomes final."""
        while True:
            kind, value = await events.get()
            if kind == "finish":
                self.outcome = value
                if self.finish_reason is None:
                    self.finish_reason = "stop" if value in ("stop", "cancelled") else "length"
                    tail = self.tokenizer.decode(self.tokens)[len(self.text):]  # whatever was held back
                    self.text += tail
                    if tail and not isinstance(value, Exception):
                        yield tail
                return
            if self.finish_reason is not None:
                continue  # tokens that raced the cancellation
            self.tokens.append(value)
            text = self.tokenizer.decode(self.tokens)
            hit = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
            if hit >= 0:
                text, self.finish_reason = text[:hit], "stop"
                self.cancel()
            elif text.endswith("\ufffd"):
                continue  # an unfinished character: wait for its next byte
            else:
                # Hold back a suffix that could still grow into a stop sequence.
                keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
                text = text[:len(text) - keep]
            if len(text) > len(self.text):
                piece, self.text = text[len(self.text):], text
                yield piece


async def _sse(completion: _Completion, events: asyncio.Queue, meta: dict[str, Any]) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None) -> str:
        payload = {**meta, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    try:
        async for piece in completion.run(events):
            yield chunk(piece, None)
    except asyncio.CancelledError:  # the client went away: stop generating for it
        completion.cancel()
        raise
    if isinstance(completion.outcome, Exception):
        yield f"data: {json.dumps({'error': {'message': str(completion.outcome), 'type': 'server_error'}})}\n\n"
    else:
        yield chunk("", completion.finish_reason)
    yield "data: [DONE]\n\n"
