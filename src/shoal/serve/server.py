"""`shoal serve`: an OpenAI-compatible completions server (FastAPI + uvicorn) over the batching scheduler.

Routes: POST /v1/completions (with `stream: true` as server-sent events), GET /v1/models, GET /v1/drift (traffic
against the training data), GET /healthz, GET /metrics (Prometheus). Bad requests are 4xx JSON errors in OpenAI's
shape, never a 500: 401 without a valid API key (when keys are set), 400 over the caps, 413 for a body over the
limit, 422 for malformed fields, 429 over the rate limit or with a full queue, 503 after a queue timeout, 504 after
the request timeout.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from tokenizers import Tokenizer

from shoal.data.tokenizer import eot_id
from shoal.serve.backend import Backend, Serving
from shoal.serve.completion import Completion, Dispatcher
from shoal.serve.drift import DriftMonitor
from shoal.serve.engine import Request as EngineRequest
from shoal.serve.metrics import ServerMetrics
from shoal.serve.scheduler import Busy, Scheduler
from shoal.serve.security import RateLimiter, match_key

StopText = Annotated[str, Field(max_length=256)]  # a stop sequence is checked against every new piece of text


class CompletionRequest(BaseModel):
    """The fields of OpenAI's /v1/completions that a single-prompt text model can honour (others are refused)."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # an extension, as in vLLM
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator takes
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None  # OpenAI's limit: 4
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    user: str | None = None


@dataclass
class ServerSettings:
    api_keys: dict[str, str] | None = None  # {key: name}; None: no authentication (loopback only)
    rate_limit: float | None = None  # requests per minute per key (per client address without keys)
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # default: the model's context
    max_tokens: int = 1024  # cap on a request's max_tokens
    request_timeout: float = 300.0  # seconds from arrival to the last token


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def create_app(scheduler: Scheduler | None = None, tokenizer: Tokenizer | None = None, model_name: str = "",
               settings: ServerSettings | None = None, drift: DriftMonitor | None = None,
               serving: Serving | None = None) -> FastAPI:
    """The app over `serving` (or over one backend made of scheduler, tokenizer, name and drift monitor); with a
    drift monitor, GET /v1/drift reports it and /metrics carries its gauges (the scheduler's on_admit must feed it
    prompts)."""
    settings = settings or ServerSettings()
    serving = serving or Serving(Backend(scheduler, tokenizer, model_name, model_name, drift))
    app = FastAPI(title="shoal", version="1")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    metrics = ServerMetrics(serving)
    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
    created = int(time.time())
    dispatcher: Dispatcher | None = None  # made on the first request, in the server's event loop

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("422").inc()
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}" if where else
                              first.get("msg", "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unparseable bodies (bad UTF-8), unknown routes, wrong methods: the same JSON shape as every other error.
        return refuse(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    def refuse(status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None,
               **more_headers: str) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return error_response(status, message, kind, {**(headers or {}), **more_headers} or None)

    def gatekeeper(request: Request) -> JSONResponse | None:
        """401 without a valid key (when keys are set), 429 over the rate limit; None lets the request in."""
        client = request.client.host if request.client else "unknown"
        if settings.api_keys is not None:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            name = match_key(settings.api_keys, presented.strip()) if scheme.lower() == "bearer" else None
            if name is None:
                return refuse(401, "a valid API key is required: Authorization: Bearer <key>", "authentication_error",
                              **{"WWW-Authenticate": "Bearer"})
            client = name
        wait = limiter.allow(client) if limiter else 0.0
        if wait:
            return refuse(429, f"rate limit of {settings.rate_limit:g} requests per minute reached; retry in "
                          f"{wait:.1f} s", "rate_limit_error", **{"Retry-After": str(math.ceil(wait))})
        return None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        now = serving.current
        return {"status": "ok", "model": now.name, "version": now.version, "running": now.scheduler.batch_size,
                "waiting": now.scheduler.queue_depth}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=None)
    async def models(request: Request) -> JSONResponse:
        refused = gatekeeper(request)
        return refused or JSONResponse({"object": "list", "data": [
            {"id": serving.current.name, "object": "model", "created": created, "owned_by": "shoal",
             "version": serving.current.version}]})

    @app.get("/v1/drift", response_model=None)
    async def drift_report(request: Request) -> JSONResponse:
        refused = gatekeeper(request)
        if refused:
            return refused
        monitor = serving.current.monitor
        if monitor is None:
            return refuse(404, "drift monitoring is off on this server (start it without --no-drift, with "
                          "--drift-reference when the run's data is not here)", "not_found_error")
        return JSONResponse(await asyncio.to_thread(monitor.report))

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        arrived = time.monotonic()
        refused = gatekeeper(request)
        if refused:
            return refused
        backend = serving.acquire()  # this request's model, to its last token, whatever swaps meanwhile
        streaming = False
        try:
            response = await respond(backend, body, arrived)
            streaming = isinstance(response, ReleasingStream)  # it releases the backend when its stream ends
            return response
        finally:
            if not streaming:
                serving.release(backend)

    async def respond(backend: Backend, body: CompletionRequest, arrived: float) -> JSONResponse | StreamingResponse:
        scheduler, tokenizer = backend.scheduler, backend.tokenizer
        if body.model not in (None, backend.name):
            return refuse(404, f"model {body.model!r} is not served here; this server serves {backend.name!r}",
                          "not_found_error")
        if body.max_tokens > settings.max_tokens:
            return refuse(400, f"max_tokens is {body.max_tokens}; this server allows at most {settings.max_tokens}")
        prompt = tokenizer.encode(body.prompt, add_special_tokens=False).ids
        max_prompt = settings.max_prompt_tokens or scheduler.engine.max_len
        if len(prompt) > max_prompt:
            return refuse(400, f"the prompt has {len(prompt)} tokens; this server allows at most {max_prompt}")
        stops = [s for s in ([body.stop] if isinstance(body.stop, str) else body.stop or []) if s]
        engine_request = EngineRequest(prompt, body.max_tokens, body.temperature, body.top_k, body.top_p, body.seed,
                                       eot_id(tokenizer))
        nonlocal dispatcher
        loop = asyncio.get_running_loop()
        if dispatcher is None or dispatcher.loop is not loop:
            dispatcher = Dispatcher(loop)
        post = dispatcher.post
        events: asyncio.Queue = asyncio.Queue()
        try:
            ticket = scheduler.submit(engine_request, lambda t: post(events, ("token", t)),
                                      lambda r: post(events, ("finish", r)))
        except ValueError as e:
            return refuse(400, str(e))
        except Busy as e:
            return refuse(e.status, str(e), "server_busy")
        metrics.prompt_tokens.inc(len(prompt))
        completion = Completion(tokenizer, prompt, stops, lambda: scheduler.cancel(ticket), arrived,
                                arrived + settings.request_timeout, body.stream)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": backend.name, "model_version": backend.version}
        if body.stream:
            metrics.requests.labels("200").inc()
            return ReleasingStream(_sse(completion, events, meta, metrics), completion,
                                   lambda: serving.release(backend))
        try:
            async for _ in completion.run(events):
                pass
        except asyncio.CancelledError:
            scheduler.cancel(ticket)
            raise
        completion.record(metrics)
        if isinstance(completion.outcome, Exception):
            status = completion.outcome.status if isinstance(completion.outcome, Busy) else 500
            return refuse(status, str(completion.outcome), "server_busy" if status != 500 else "server_error")
        if completion.timed_out:
            return refuse(504, f"the request took longer than {settings.request_timeout:g} s", "timeout")
        metrics.requests.labels("200").inc()
        return JSONResponse({**meta, "choices": [{"text": completion.text, "index": 0, "logprobs": None,
                                                  "finish_reason": completion.finish_reason}],
                             "usage": completion.usage})

    return app


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is parsed, whether its length was
    declared or it arrives in chunks (it is read here, at most `limit` bytes of it, and handed on whole)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"the request body is over {self.limit} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_large(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ReleasingStream(StreamingResponse):
    """A server-sent-events response that, however it ends (finished, failed, or the client gone before its first
    byte), stops generating for its request and releases the backend the request acquired."""

    def __init__(self, content: AsyncIterator[str], completion: Completion, release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.completion, self.release = completion, release

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.completion.cancel()  # a no-op once it has finished
            self.release()


async def _sse(completion: Completion, events: asyncio.Queue, meta: dict[str, Any],
               metrics: ServerMetrics) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None) -> str:
        payload = {**meta, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    try:
        async for piece in completion.run(events):
            yield chunk(piece, None)
    except asyncio.CancelledError:  # the client went away: stop generating for it
        completion.cancel()
        raise
    completion.record(metrics)
    if completion.timed_out:
        yield f"data: {json.dumps({'error': {'message': 'the request timed out', 'type': 'timeout'}})}\n\n"
    elif isinstance(completion.outcome, Exception):
        yield f"data: {json.dumps({'error': {'message': str(completion.outcome), 'type': 'server_error'}})}\n\n"
    else:
        yield chunk("", completion.finish_reason)
    yield "data: [DONE]\n\n"
