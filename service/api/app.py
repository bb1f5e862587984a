"""The FastAPI application (torch-free): ``create_app(settings)``.

``topiary serve`` runs it under uvicorn after migrating; ``uvicorn --factory
service.api.app:create_app`` works too. Nothing touches the database or the
network at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api.errors import install_error_handlers
from service.api.limits import BodySizeLimitMiddleware
from service.api.metrics import Metrics, RequestMetricsMiddleware
from service.api.routes import catalog, events, health, jobs, results, ui, weights
from service.config import Settings, get_settings
from service.db import create_engine_for
from service.logs import configure_logging
from service.tenants import DEFAULT_TENANT
from service.trials import StudyReader

logger = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024
# Room for the multipart boundaries and headers around the uploaded file itself.
MULTIPART_OVERHEAD = 64 * 1024


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

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        study_reader.close()
        engine.dispose()

    app = FastAPI(title="Topiary", version="1", lifespan=lifespan,
                  description="Prune PyTorch CNNs to a latency and memory budget.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.study_reader = study_reader
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, default_limit=JSON_BODY_LIMIT,
                       limits={"/v1/weights": settings.max_upload_bytes + MULTIPART_OVERHEAD},
                       max_upload_mb=settings.max_upload_mb)
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.metrics)
    for router in (health.router, catalog.router, jobs.router, results.router, events.router,
                   weights.router, ui.router):
        app.include_router(router)
    if settings.auth == "none":
        logger.warning("authentication is off (TOPIARY_AUTH=none): every request acts as "
                       "tenant %r; allowed because the server binds to loopback %s",
                       DEFAULT_TENANT, settings.host)
    else:
        logger.info("API keys required (Authorization: Bearer <key>)")
    return app
