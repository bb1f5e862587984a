"""Reads of jobs, their log and their artifacts (the API's side of the repository)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select
from sqlalchemy.orm import Session, joinedload

from service.db import use_session
from service.errors import NotFoundError
from service.jobs._state import JobStatus
from service.jobs._tables import Artifact, Event, Job
from service.tables import ACTIVE_KEY, ApiKey, WeightsUpload, is_valid_id

# One query: the artifacts come with the job instead of a second SELECT. Built once:
# building a statement costs more than running it.
_JOB = select(Job).options(joinedload(Job.artifacts)).where(Job.id == bindparam("job_id"))
_TENANT_JOB = _JOB.where(Job.tenant_id == bindparam("tenant_id"))


@dataclass(frozen=True, slots=True)
class ArtifactRead:
    """An artifact as ``get_job_for_key`` read it (no ORM object)."""

    job_id: str
    kind: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class JobRead:
    """A job as ``get_job_for_key`` read it: the columns readers of a job use, as plain
    values, and its artifacts; what ``JobPublic`` and ``waiting_for`` read from a ``Job``."""

    id: str
    name: str
    spec: dict[str, Any]
    status: str
    phase: str | None
    attempts: int
    device_request: str | None
    device_type: str | None
    latency_runtime: str
    device_model: str | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    baseline: dict[str, Any] | None
    best: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    study_name: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    artifacts: tuple[ArtifactRead, ...]


_JOBS, _ARTIFACTS, _KEYS = Job.__table__, Artifact.__table__, ApiKey.__table__
_READ_COLUMNS = [name for name in JobRead.__dataclass_fields__ if name != "artifacts"]
# The job, if an active key of its tenant is the one presented, with its artifacts: the
# key check and the read in one round trip, in Core (``get_job_for_key``; loading ORM
# objects would cost more than the statement).
_KEY_JOB = (
    select(*(_JOBS.c[name] for name in _READ_COLUMNS),
           _ARTIFACTS.c.kind.label("artifact_kind"), _ARTIFACTS.c.size.label("artifact_size"),
           _ARTIFACTS.c.sha256.label("artifact_sha256"))
    .select_from(_JOBS.join(_KEYS, _KEYS.c.tenant_id == _JOBS.c.tenant_id)
                 .outerjoin(_ARTIFACTS, _ARTIFACTS.c.job_id == _JOBS.c.id))
    .where(_JOBS.c.id == bindparam("job_id"), ACTIVE_KEY)
    .order_by(_ARTIFACTS.c.kind))  # as Job.artifacts is ordered
#: The largest id the events table's INTEGER key can hold.
LARGEST_EVENT_ID = 2**31 - 1


def get_job(bind: Engine | Session, job_id: str, tenant_id: int | None = None) -> Job:
    """One job; with ``tenant_id``, only if it belongs to that tenant.

    Raises:
        NotFoundError: no such job (or another tenant's: the same error, on purpose).
    """
    if not is_valid_id(job_id):
        raise NotFoundError(f"job {job_id} not found")
    statement, parameters = ((_JOB, {"job_id": job_id}) if tenant_id is None else
                             (_TENANT_JOB, {"job_id": job_id, "tenant_id": tenant_id}))
    with use_session(bind) as session:
        job = session.scalars(statement, parameters).unique().one_or_none()
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


def get_job_for_key(connection: Connection, job_id: str, key_hash: str) -> JobRead | None:
    """The job, if the tenant of the active API key hashed ``key_hash`` owns it; None when
    it does not, when there is no such job, or when the key is unknown or revoked (the
    caller tells those apart, on its rare path).

    One statement where a key lookup and ``get_job`` take two: on PostgreSQL each
    round trip costs the API process about a third of a millisecond of CPU.
    """
    if not is_valid_id(job_id):
        return None
    rows = connection.execute(_KEY_JOB, {"job_id": job_id, "key_hash": key_hash}).all()
    if not rows:
        return None
    first = rows[0]._mapping
    artifacts = tuple(ArtifactRead(job_id, row.artifact_kind, row.artifact_size,
                                   row.artifact_sha256)
                      for row in rows if row.artifact_kind is not None)
    return JobRead(**{name: first[name] for name in _READ_COLUMNS}, artifacts=artifacts)


def list_jobs(session: Session, tenant_id: int, *, status: JobStatus | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
    """A page of the tenant's jobs, newest first, and how many there are in all."""
    conditions = [Job.tenant_id == tenant_id]
    if status is not None:
        conditions.append(Job.status == status.value)
    total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    jobs = session.scalars(select(Job).where(*conditions)
                           .order_by(Job.created_at.desc(), Job.id.desc())
                           .limit(limit).offset(offset)).all()
    return list(jobs), total


def list_events(bind: Engine | Session, job_id: str, *, after_id: int = 0,
                limit: int = 1000) -> list[Event]:
    """The job's log lines with ids above ``after_id``, oldest first."""
    # Event ids are 32-bit keys; PostgreSQL refuses to compare one with a larger number.
    after_id = min(after_id, LARGEST_EVENT_ID)
    with use_session(bind) as session:
        return list(session.scalars(select(Event).where(Event.job_id == job_id,
                                                        Event.id > after_id)
                                    .order_by(Event.id).limit(limit)).all())


def get_artifact(session: Session, job_id: str, kind: str) -> Artifact | None:
    return session.scalars(select(Artifact).where(Artifact.job_id == job_id,
                                                  Artifact.kind == kind)).one_or_none()


def count_jobs_by_status(bind: Engine | Session) -> dict[str, int]:
    """Number of jobs in each status (every status present, zeros included)."""
    with use_session(bind) as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: count for status, count in rows})
    return counts


def upload_path(bind: Engine | Session, tenant_id: int, upload_id: str) -> str | None:
    """Where a tenant's weights upload is stored (None: no such upload for that tenant)."""
    with use_session(bind) as session:
        return session.scalar(select(WeightsUpload.path).where(
            WeightsUpload.id == upload_id, WeightsUpload.tenant_id == tenant_id))
