"""Prometheus metrics of the server, in a registry of its own (so several servers in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shoal.serve.backend import Backend, Serving
from shoal.serve.drift import register_drift_gauges

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    """Request counters and latencies, the current backend's queue and batch, the served version and the swaps, and
    the drift gauges of the current backend's monitor."""

    def __init__(self, serving: Serving) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("shoal_requests", "Completion requests by HTTP status", ["status"],
                                registry=self.registry)
        self.latency = Histogram("shoal_request_seconds", "Time from request to last token", buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.first_token = Histogram("shoal_time_to_first_token_seconds", "Time from request to first token",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("shoal_prompt_tokens", "Prompt tokens received", registry=self.registry)
        self.generated_tokens = Counter("shoal_generated_tokens", "Tokens generated", registry=self.registry)
        self.tokens_per_second = Histogram("shoal_request_tokens_per_second", "Generated tokens per second, per request",
                                           buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
                                           registry=self.registry)
        Gauge("shoal_queue_depth", "Requests waiting for a row", registry=self.registry).set_function(
            lambda: serving.current.scheduler.queue_depth)
        Gauge("shoal_batch_size", "Sequences decoding together", registry=self.registry).set_function(
            lambda: serving.current.scheduler.batch_size)
        self.version = Gauge("shoal_model_version_info", "1 for the model version served now", ["model", "version"],
                             registry=self.registry)
        self.version.labels(serving.current.name, serving.current.version).set(1)
        Gauge("shoal_model_swaps", "Times the served model was swapped", registry=self.registry).set_function(
            lambda: serving.swaps)
        serving.on_swap.append(self._swapped)
        register_drift_gauges(self.registry, lambda: serving.current.monitor)

    def _swapped(self, old: Backend, new: Backend) -> None:
        self.version.remove(old.name, old.version)
        self.version.labels(new.name, new.version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
