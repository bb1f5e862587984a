"""Submission: the checks pydantic cannot do, the per-tenant cap, the new queued job."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from core.errors import InvalidSpecError
from core.spec import JobSpec, resolve_data_root
from service.db import UTCDateTime, use_session, utcnow, write_connection
from service.errors import JobQuotaError, SpecValidationError, TooManyJobsError
from service.jobs._state import ACTIVE_STATUSES, JobStatus
from service.jobs._tables import Event, Job
from service.tables import Tenant, WeightsUpload, is_valid_id, new_id

# Statements of the submission path, built once over the tables (building one, or running
# it through the ORM, costs more than running it).
_JOBS, _EVENTS, _TENANTS = (cast(Table, model.__table__) for model in (Job, Event, Tenant))
_INSERT_JOB = insert(_JOBS)
_INSERT_EVENT = insert(_EVENTS)
# Writing the tenant row serialises this tenant's submissions (a row lock on
# PostgreSQL, the write lock on SQLite) until commit, so the count after it, which
# includes the new job, is exact. Taking it last keeps the lock short. The same write
# counts the job in the tenant's 24-hour quota window (a new window starts with the
# first job after the last one ended); SET reads the row as it was before.
QUOTA_WINDOW = timedelta(days=1)
_NOW = bindparam("now", type_=UTCDateTime)
_IN_WINDOW = _TENANTS.c.quota_day_started_at > bindparam("window_start", type_=UTCDateTime)
_LOCK_TENANT = (update(_TENANTS).where(_TENANTS.c.id == bindparam("tenant"))
                .values(last_submission_at=_NOW,
                        quota_day_jobs=case((_IN_WINDOW, _TENANTS.c.quota_day_jobs + 1),
                                            else_=1),
                        quota_day_started_at=case(
                            (_IN_WINDOW, _TENANTS.c.quota_day_started_at), else_=_NOW))
                .returning(_TENANTS.c.quota_day_jobs, _TENANTS.c.quota_day_started_at))
# Counting stops past the cap: the question is only whether the new job fits.
_ACTIVE_JOBS = select(func.count()).select_from(
    select(Job.id).where(Job.tenant_id == bindparam("tenant"),
                         Job.status.in_([s.value for s in ACTIVE_STATUSES]))
    .limit(bindparam("cap_plus_one")).subquery())


#: What a refusal by the unfinished-job cap tells the client to wait (a job's end cannot be
#: foreseen; a minute is shorter than most trials).
ACTIVE_JOBS_RETRY_SECONDS = 60


def requested_device_type(spec: JobSpec) -> str | None:
    """The device type a spec's latency must be measured on (None for ``auto``, unless its
    runtime needs one: OpenVINO the CPU, TensorRT a CUDA GPU)."""
    return spec.latency.required_device_type()


def worker_runtime(spec: JobSpec) -> str:
    """The latency runtime a worker must have to take the job: the spec's, or torch alone
    when a latency agent times it (``latency.target``: the worker only exports)."""
    return spec.latency.runtime if spec.latency.target is None else "torch"


def _nul_characters(value: Any, location: list[str | int]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return ([{"loc": location, "msg": "contains a NUL character", "type": "nul_character"}]
                if "\x00" in value else [])
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else [])
    return [error for key, item in items for error in _nul_characters(item, [*location, key])]


def submission_errors(session: Session, tenant_id: int, spec: JobSpec,
                      data_root: Path, dumped: dict[str, Any] | None = None
                      ) -> list[dict[str, Any]]:
    """What makes a well-formed spec impossible to run on this server, field by field.

    Args:
        session: our database.
        tenant_id: the submitting tenant (weights must be its own upload).
        spec: the parsed spec.
        data_root: ``Settings.data_root``.
        dumped: ``spec.model_dump(mode="json")`` when the caller has it already.

    Returns:
        One ``{"loc", "msg", "type"}`` per bad field; empty when the spec can run.
    """
    errors = _nul_characters(spec.model_dump(mode="json") if dumped is None else dumped, [])
    if errors:
        return errors  # no path or database lookup can take such strings
    if spec.dataset.root:
        try:
            folder = resolve_data_root(spec.dataset.root, data_root)
        except InvalidSpecError as error:
            errors.append({"loc": ["dataset", "root"], "msg": str(error),
                           "type": "outside_data_root"})
        else:
            if not folder.is_dir():
                errors.append({"loc": ["dataset", "root"],
                               "msg": f"no folder {spec.dataset.root!r} under the server's data "
                                      "root; copy the dataset there or fix the path",
                               "type": "missing_dataset_root"})
    try:
        spec.num_classes()
    except InvalidSpecError as error:
        errors.append({"loc": ["model", "num_classes"], "msg": str(error),
                       "type": "missing_num_classes"})
    if spec.model.weights is not None:
        owned = is_valid_id(spec.model.weights) and session.scalar(select(WeightsUpload.id).where(
            WeightsUpload.id == spec.model.weights, WeightsUpload.tenant_id == tenant_id))
        if not owned:
            errors.append({"loc": ["model", "weights"],
                           "msg": f"no weights upload {spec.model.weights!r}; upload the file "
                                  "with POST /v1/weights and use the id it returns",
                           "type": "unknown_weights"})
    return errors


def submit_job(bind: Engine | Session, tenant_id: int, spec: JobSpec, *, data_root: Path,
               max_active_jobs: int, max_jobs_per_day: int | None = None) -> Job:
    """Queue a job after every check.

    Given an engine, the job is committed here; given a session, the caller commits.

    Args:
        bind: engine or session.
        tenant_id: the submitting tenant.
        spec: the parsed spec.
        data_root: ``Settings.data_root``.
        max_active_jobs: the tenant's cap on jobs that are not finished.
        max_jobs_per_day: the tenant's quota of jobs in 24 hours (None: no quota; the
            job is counted all the same).

    Returns:
        The new queued job.

    Raises:
        SpecValidationError: the spec cannot run here (every bad field listed).
        TooManyJobsError: the tenant already has ``max_active_jobs`` unfinished jobs.
        JobQuotaError: the tenant submitted ``max_jobs_per_day`` jobs in this window.
    """
    with use_session(bind) as session:
        return _submit(session, tenant_id, spec, data_root, max_active_jobs, max_jobs_per_day)


def _submit(session: Session, tenant_id: int, spec: JobSpec, data_root: Path,
            max_active_jobs: int, max_jobs_per_day: int | None) -> Job:
    dumped = spec.model_dump(mode="json")
    errors = submission_errors(session, tenant_id, spec, data_root, dumped)
    if errors:
        raise SpecValidationError(errors)
    now = utcnow()
    values = {"id": new_id(), "tenant_id": tenant_id, "name": spec.name, "spec": dumped,
              "status": JobStatus.QUEUED.value, "device_request": requested_device_type(spec),
              "latency_runtime": worker_runtime(spec),
              "attempts": 0, "cancel_requested": False, "created_at": now, "updated_at": now}
    connection = write_connection(session)
    connection.execute(_INSERT_JOB, values)
    job = Job(**values, artifacts=[])  # what was inserted, for the caller
    connection.execute(_INSERT_EVENT, {
        "job_id": job.id, "kind": "status", "created_at": now,
        "message": "status: queued (submitted)", "data": {"status": JobStatus.QUEUED.value}})
    jobs_in_window, window_started_at = connection.execute(
        _LOCK_TENANT, {"tenant": tenant_id, "now": now, "window_start": now - QUOTA_WINDOW}).one()
    if max_jobs_per_day is not None and jobs_in_window > max_jobs_per_day:
        wait = math.ceil((window_started_at + QUOTA_WINDOW - now).total_seconds())
        raise JobQuotaError(f"this tenant submitted its {max_jobs_per_day} jobs of the day "
                            f"(TOPIARY_MAX_JOBS_PER_DAY); the quota renews in "
                            f"{wait / 3600:.1f} h", retry_after=wait)
    active = connection.scalar(_ACTIVE_JOBS, {"tenant": tenant_id,
                                              "cap_plus_one": max_active_jobs + 1}) or 0
    if active > max_active_jobs:
        raise TooManyJobsError(f"this tenant already has {max_active_jobs} unfinished jobs, "
                               "the limit; wait for one to end or cancel one",
                               retry_after=ACTIVE_JOBS_RETRY_SECONDS)
    return job
