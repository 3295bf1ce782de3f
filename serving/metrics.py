"""Prometheus metrics: one `ServingMetrics` per app, and the ASGI wrapper that times every request.

Single process: metrics live in the app's own `CollectorRegistry` (so tests can build many apps).
Several workers: `serving.server.run` points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory
before the workers start; each worker then writes its samples to memory-mapped files there and
`/metrics`, whichever worker answers, merges all of them (prometheus_client multiprocess mode).
Counters and histograms are summed across workers; the per-worker gauges (`serving_model_version`,
`serving_registry_up`) keep a `pid` label, since each worker polls and loads on its own.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from serving.settings import PROMETHEUS_MULTIPROC_ENV

log = logging.getLogger(__name__)

MULTIPROC_ENV = PROMETHEUS_MULTIPROC_ENV
#: Request latency buckets (seconds): dense below 10 ms, where a healthy prediction lands.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED_ROUTE = "<unmatched>"
#: Batch sizes: every size up to 8, then powers of two.
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


class ServingMetrics:
    """The service's metrics, registered on a registry of their own."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None and values.ValueClass is values.MutexValue:
            # prometheus_client picks its value class when first imported; if that happened before
            # the variable was set, samples would stay in this process and /metrics would lie.
            log.info("prometheus_client imported before %s was set: switching to multiprocess values", MULTIPROC_ENV)
            values.ValueClass = values.get_value_class()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("serving_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "serving_request_duration_seconds",
            "Time from request start to the last response byte handed to the server",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_version = Gauge(
            "serving_model_version",
            "Registry version this worker serves (0: none loaded)",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.model_loaded_at = Gauge(
            "serving_model_loaded_timestamp_seconds",
            "Unix time this worker swapped in the version it serves",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.model_loads = Counter(
            "serving_model_loads", "Model versions loaded into memory, by outcome", ["model", "outcome"], registry=r
        )
        self.model_load_seconds = Histogram(
            "serving_model_load_duration_seconds",
            "Time to load a version (download, deserialise, probe)",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.registry_polls = Counter(
            "serving_registry_polls",
            "Alias resolutions against the registry, by outcome (unchanged, changed, no_alias, error)",
            ["model", "outcome"],
            registry=r,
        )
        self.registry_poll_errors = Counter(
            "serving_registry_poll_errors", "Alias resolutions that failed to reach the registry", ["model"], registry=r
        )
        self.registry_up = Gauge(
            "serving_registry_up",
            "1 when this worker's last alias resolution reached the registry, else 0",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.batch_size = Histogram(
            "serving_batch_size",
            "Requests predicted together in one call (micro-batching)",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "serving_queue_wait_seconds",
            "Time a request waited for its batch to start",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predict_seconds = Histogram(
            "serving_predict_seconds",
            "Time of one batched predict call (in the model's predict thread)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def init_model(self, model: str) -> None:
        """Export every per-model series from the start, so dashboards see 0 rather than nothing."""
        self.model_version.labels(model).set(0)
        self.model_loaded_at.labels(model).set(0)
        self.registry_up.labels(model).set(0)
        self.registry_poll_errors.labels(model)
        for outcome in ("ok", "error"):
            self.model_loads.labels(model, outcome)
        for histogram in (self.batch_size, self.queue_wait, self.predict_seconds):
            histogram.labels(model)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = self._children[key] = (self.requests.labels(*labels), self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def close(self) -> None:
        """On worker shutdown: drop this pid's live gauges from the merged view."""
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def render(self) -> bytes:
        """The text exposition: this app's registry, or every worker's files in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)


class MetricsMiddleware:
    """Outermost ASGI wrapper: counts and times every HTTP request, 404s and errors included.

    It wraps Litestar's exception-handling router rather than being a Litestar middleware, which
    only runs for requests that matched a route. Routes are labelled by their template.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:  # the enum (a str) narrows Scope to HTTPScope for the type checker
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("path_template") or UNMATCHED_ROUTE
            self.metrics.observe_request(route, scope["method"], status, time.perf_counter() - start)
