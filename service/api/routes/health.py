"""/healthz (the process answers), /readyz (the database answers), /metrics (Prometheus).

``async`` with at most one hand-off to the thread pool each: probes come often. Who may
read ``/metrics`` is the guard's decision (``TOPIARY_METRICS``).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, SettingsDep
from service.api.schemas import ErrorPublic, HealthPublic
from service.db import check_connection
from service.errors import DatabaseError

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get("/readyz", responses={503: {"model": ErrorPublic}})
async def readyz(engine: EngineDep) -> HealthPublic:
    """200 when our database answers, 503 while it does not."""
    await run_in_threadpool(check_connection, engine)
    return HealthPublic(status="ready")


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Prometheus metrics; the job gauges are stale while the database is unreachable."""
    registry = request.app.state.metrics

    def read() -> bytes:
        try:
            registry.refresh_from_database(engine, settings.lease_seconds)
        except DatabaseError:
            logger.warning("job gauges not refreshed: database unreachable")
        return registry.exposition()  # type: ignore[no-any-return]

    return Response(await run_in_threadpool(read), media_type=CONTENT_TYPE_LATEST)
