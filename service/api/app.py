"""The FastAPI application (torch-free): ``create_app(settings)``.

``topiary serve`` runs it under uvicorn after migrating; ``uvicorn --factory
service.api.app:create_app`` works too. Nothing touches the database or the
network at import time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig

from service.api.errors import install_error_handlers
from service.api.guard import ApiGuardMiddleware
from service.api.metrics import Metrics, RequestMetricsMiddleware
from service.api.routes import catalog, docs, events, health, jobs, results, ui, weights
from service.api.routes.events import StreamSlots
from service.config import Settings, get_settings
from service.db import create_engine_for, read_only_engine
from service.jobs import LiveWorkers
from service.logs import configure_logging
from service.tenants import DEFAULT_TENANT
from service.trials import StudyReader

logger = logging.getLogger(__name__)

# A job spec is a few KiB; nothing else takes a JSON body.
JSON_BODY_LIMIT = 64 * 1024
# Our own metrics and logs; FastAPI's OpenTelemetry hooks would cost every request for
# providers nobody configured.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False,
                                 "operation_spans": False}
# Room for the multipart boundaries and headers around the uploaded file itself.
MULTIPART_OVERHEAD = 64 * 1024
# Threads of the polled job read (``app.state.read_threads``): no more than the database
# pool keeps open (5 on SQLite, 10 on PostgreSQL), so a burst of polls queues here, not
# on the pool's timeout.
READ_THREADS = 5


def create_app_from_environment() -> FastAPI:
    """``create_app`` in a process that uvicorn started for ``topiary serve --processes N``.

    Settings and the log format come from the environment, which ``serve`` filled in.
    """
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment).

    Args:
        settings: configuration; the database must already be migrated.

    Returns:
        The ASGI app; its engine is disposed at shutdown.

    Raises:
        ConfigurationError: ``auth=none`` on a non-loopback host.
    """
    settings = settings or get_settings()
    settings.check_auth_binding()
    settings.ensure_directories()
    engine = create_engine_for(settings.database_url)
    study_reader = StudyReader(settings.optuna_url)

    # asyncio's own hand-off to a plain executor costs the event loop about half of
    # anyio's (Starlette's run_in_threadpool), which a GET /v1/jobs/{id} would pay per poll.
    read_threads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="topiary-read")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        read_threads.shutdown(wait=True, cancel_futures=True)
        study_reader.close()
        engine.dispose()

    # The docs are our own routes (self-hosted assets, a CSP, the guard decides who sees
    # them); FastAPI's would load Swagger UI from a CDN.
    app = FastAPI(title="Topiary", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY,
                  description="Prune PyTorch CNNs to a latency and memory budget.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.read_engine = read_only_engine(engine)
    app.state.read_threads = read_threads
    app.state.live_workers = LiveWorkers(within_seconds=2 * settings.lease_seconds)
    app.state.study_reader = study_reader
    app.state.metrics = Metrics()
    app.state.stream_slots = StreamSlots(settings.max_streams_per_key)
    install_error_handlers(app)
    # The last added runs first: metrics time everything, the guard's refusals too.
    app.add_middleware(ApiGuardMiddleware, settings=settings, engine=engine,
                       default_body_limit=JSON_BODY_LIMIT,
                       body_limits={"/v1/weights": settings.max_upload_bytes
                                    + MULTIPART_OVERHEAD})
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics,
                       log_every_request=settings.access_log == "all")
    for router in (health.router, catalog.router, jobs.router, results.router, events.router,
                   weights.router, ui.router, docs.router):
        # The routes themselves (their paths carry the router's prefix): an included
        # router is matched through a layer of its own on every request, which costs
        # more than a GET /v1/jobs/{id} spends in its handler.
        app.router.routes.extend(router.routes)
    app.openapi = functools.partial(openapi_with_keys, app)  # type: ignore[method-assign]
    if settings.auth == "none":
        logger.warning("authentication is off (TOPIARY_AUTH=none): every request acts as "
                       "tenant %r; allowed because the server binds to loopback %s",
                       DEFAULT_TENANT, settings.host)
    else:
        logger.info("API keys required (Authorization: Bearer <key>)")
    return app


def openapi_with_keys(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema, saying that every ``/v1`` operation takes a bearer key (the guard
    checks it; no per-route dependency does, so FastAPI would not know)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"APIKey": {
            "type": "http", "scheme": "bearer",
            "description": "an API key from `topiary keys create`"}}
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/v1"):
                for operation in operations.values():
                    operation["security"] = [{"APIKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema
