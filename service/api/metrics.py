"""Prometheus metrics of one app: HTTP latency per route, jobs by status, live workers,
searches that stalled.

Each app has its own registry (several apps can live in one test process).
Under ``topiary serve --processes N`` the processes share their values through
prometheus_client's multiprocess mode (files in ``PROMETHEUS_MULTIPROC_DIR``), so a
scrape of any of them reports the counts of all. The stall counter is read from
the database (the workers detect stalls and write one event per stall), so it is
the same whichever process is scraped. The middleware is plain ASGI so that it
also times streamed responses.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.jobs import count_jobs_by_status, count_live_workers, count_stalls

logger = logging.getLogger("service.api.access")

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StallCounter:
    """``topiary_search_stalls_total``: stall events on jobs, as last read from the database."""

    def __init__(self) -> None:
        self.value = 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "topiary_search_stalls", "Searches that made no progress for their stall bound "
            "(reported once per stall, whichever worker saw it)", value=self.value)


class Metrics:
    """The app's registry and instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_latency = Histogram(
            "topiary_http_request_duration_seconds", "HTTP request latency",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # Read from the database at scrape time: the latest reading is the answer.
        self.jobs = Gauge("topiary_jobs", "Jobs by status", ["status"], registry=self.registry,
                          multiprocess_mode="mostrecent")
        self.live_workers = Gauge("topiary_live_workers",
                                  "Workers with a heartbeat in the last two lease periods",
                                  registry=self.registry, multiprocess_mode="mostrecent")
        self.stalls = StallCounter()
        self.registry.register(self.stalls)

    def refresh_from_database(self, engine: Engine, lease_seconds: float) -> None:
        """Read the job and worker gauges from the database now.

        Raises:
            DatabaseError: the database does not answer (the gauges keep their values).
        """
        for status, count in count_jobs_by_status(engine).items():
            self.jobs.labels(status=status).set(count)
        self.live_workers.set(count_live_workers(engine, within_seconds=2 * lease_seconds))
        self.stalls.value = count_stalls(engine)

    def exposition(self) -> bytes:
        """The Prometheus text format of every instrument (of every API process)."""
        if MULTIPROCESS_DIR_VARIABLE not in os.environ:
            return generate_latest(self.registry)
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process)
        every_process.register(self.stalls)
        return generate_latest(every_process)


def fresh_metrics_dir(home: Path) -> Path:
    """An empty folder for the metric files the API processes share (old runs' removed)."""
    folder = home / "metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


#: A request this slow is logged even when only errors are (``TOPIARY_ACCESS_LOG=errors``).
SLOW_REQUEST_SECONDS = 1.0


class RequestMetricsMiddleware:
    """Times every HTTP request and labels it by route template; logs one line for each
    (``log_every_request``) or only for failed (4xx, 5xx) and slow ones."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_every_request: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_every_request = log_every_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.http_latency.labels(method=scope["method"], route=route,
                                             status=str(status)).observe(elapsed)
            if self.log_every_request or status >= 400 or elapsed >= SLOW_REQUEST_SECONDS:
                logger.info("request", extra={"method": scope["method"], "path": scope["path"],
                                              "route": route, "status": status,
                                              "duration_ms": round(elapsed * 1000, 2)})


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
