"""/v1/jobs: submit, list, read and cancel jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from service import jobs
from service.api.deps import CommittingRoute, CurrentTenant, SessionDep, SettingsDep
from service.api.schemas import ErrorPublic, JobCreate, JobPublic, JobsPublic
from service.jobs import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=CommittingRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorPublic, "description": "no such job for this tenant"}}


@router.post("", status_code=201, responses={
    422: {"model": ErrorPublic, "description": "every bad field of the spec"},
    429: {"model": ErrorPublic, "description": "the tenant's concurrent-job cap is reached"}})
def submit(spec: JobCreate, tenant: CurrentTenant, session: SessionDep,
           settings: SettingsDep) -> JobPublic:
    """Queue a pruning job; the spec is checked completely before anything is stored."""
    assert settings.data_root is not None
    job = jobs.submit_job(session, tenant.id, spec, data_root=settings.data_root,
                          max_active_jobs=settings.max_concurrent_jobs_per_tenant)
    return JobPublic.from_row(job)


@router.get("")
def list_tenant_jobs(tenant: CurrentTenant, session: SessionDep,
                     status: JobStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50,
                     offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> JobsPublic:
    """The tenant's jobs, newest first."""
    rows, count = jobs.list_jobs(session, tenant.id, status=status, limit=limit, offset=offset)
    return JobsPublic(data=[JobPublic.from_row(job) for job in rows], count=count, limit=limit,
                      offset=offset)


@router.get("/{job_id}", responses=NOT_FOUND)
def read_job(job_id: str, tenant: CurrentTenant, session: SessionDep) -> JobPublic:
    """Status, phase, progress, baseline and best metrics, error."""
    return JobPublic.from_row(jobs.get_job(session, job_id, tenant.id))


@router.post("/{job_id}/cancel", responses={
    **NOT_FOUND, 409: {"model": ErrorPublic, "description": "the job already ended"}})
def cancel_job(job_id: str, tenant: CurrentTenant, session: SessionDep) -> JobPublic:
    """Cancel now if no worker holds the job, else ask its workers to stop."""
    job = jobs.request_cancel(session, tenant.id, job_id)
    return JobPublic.from_row(job)
