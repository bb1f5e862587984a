"""/v1/jobs: submit, list, read, cancel and delete jobs."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service import jobs
from service.api.deps import (
    CommittingRoute,
    CurrentTenant,
    LiveWorkersDep,
    SessionDep,
    SettingsDep,
    StudyReaderDep,
    key_tenant,
    owned_job,
    serve_directly,
)
from service.api.schemas import ErrorPublic, JobCreate, JobPublic, JobsPublic
from service.config import Settings
from service.db import database_error
from service.errors import DatabaseError
from service.jobs import JobStatus, LiveWorkers, RemovedJob
from service.tenants import TenantIdentity
from service.trials import StudyReader

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=CommittingRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such job for this tenant"}}


@router.post("", status_code=201, responses={
    422: {"model": ErrorPublic, "description": "every bad field of the spec"},
    429: {"model": ErrorPublic, "description": "the tenant's concurrent-job cap or daily "
                                              "job quota is reached (see Retry-After)"}})
def submit(spec: JobCreate, tenant: CurrentTenant, session: SessionDep,
           settings: SettingsDep, live: LiveWorkersDep) -> JobPublic:
    """Queue a pruning job; the spec is checked completely before anything is stored."""
    assert settings.data_root is not None
    job = jobs.submit_job(session, tenant.id, spec, data_root=settings.data_root,
                          max_active_jobs=settings.max_concurrent_jobs_per_tenant,
                          max_jobs_per_day=settings.max_jobs_per_day)
    waiting = jobs.waiting_for(session, job, live)
    return JobPublic.from_row(job, waiting_for=waiting)


@router.get("")
def list_tenant_jobs(tenant: CurrentTenant, session: SessionDep,
                     status: JobStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50,
                     offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> JobsPublic:
    """The tenant's jobs, newest first."""
    rows, count = jobs.list_jobs(session, tenant.id, status=status, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic.from_row(job) for job in rows], count=count, limit=limit,
                      offset=offset)


@router.get("/{job_id}", responses=NOT_FOUND, response_model=JobPublic)
async def read_job(job_id: str, request: Request) -> Response:
    """Status, phase, progress, baseline and best metrics, every limit beside its delivered
    value, error; for a waiting job, what it waits for."""
    # The route clients poll, kept lean: served as plain ASGI (serve_directly, below) with
    # no ORM session; one worker-thread call reads the job on a pooled connection, with
    # the key checked in the same statement (owned_job), and serialises the answer there.
    tenant = await key_tenant(request)
    state = request.app.state
    body = await asyncio.get_running_loop().run_in_executor(
        state.read_threads, _job_body, state.read_engine, state.live_workers, job_id, tenant)
    return Response(body, media_type="application/json")


serve_directly(router, read_job)


def _job_body(engine: Engine, live: LiveWorkers, job_id: str, tenant: TenantIdentity) -> bytes:
    """The job's ``JobPublic`` as JSON, if ``tenant`` owns it (``read_job``)."""
    try:
        with engine.connect() as connection:
            job = owned_job(connection, job_id, tenant)
            waiting = jobs.waiting_for(connection, job, live)
            return JobPublic.from_row(job, waiting_for=waiting).model_dump_json().encode()
    except SQLAlchemyError as error:
        raise database_error(error) from error


@router.post("/{job_id}/cancel", responses={
    **NOT_FOUND, 409: {"model": ErrorPublic, "description": "the job already ended"}})
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep) -> JobPublic:
    """Cancel now if no worker holds the job, else ask its workers to stop."""
    job = jobs.request_cancel(session, tenant.id, job_id)
    return JobPublic.from_row(job)


@router.delete("/{job_id}", status_code=204, responses={
    **NOT_FOUND, 409: {"model": ErrorPublic, "description": "the job has not ended"}})
def delete_job(job_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep,
               reader: StudyReaderDep, background: BackgroundTasks) -> None:
    """Delete a finished job, its log, its checkpoints and its trials."""
    removed = jobs.delete_job(session, tenant.id, job_id)
    # Once the deletion has committed (the route's thread commits as it returns).
    background.add_task(_remove_outside_files, removed, settings, reader)


def _remove_outside_files(removed: RemovedJob, settings: Settings, reader: StudyReader) -> None:
    assert settings.artifact_dir is not None
    jobs.remove_job_files(removed, settings.artifact_dir)
    try:
        reader.delete_study(removed.study_name)
    except DatabaseError:
        logger.warning("the trials of a deleted job stay in Optuna's database",
                       extra={"job_id": removed.id, "study_name": removed.study_name})
