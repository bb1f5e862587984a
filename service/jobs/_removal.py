"""Removing a finished job: one guarded ``DELETE`` (its log, artifacts and participants go
with it by the foreign keys' cascade); the caller removes its files once that committed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Table, bindparam, delete
from sqlalchemy.orm import Session

from service.db import affected_rows, write_connection
from service.errors import InvalidTransitionError, NotFoundError
from service.jobs._guard import status_values
from service.jobs._queries import get_job
from service.jobs._state import TERMINAL_STATUSES, JobStatus
from service.jobs._tables import Job

_JOBS: Table = Job.__table__  # type: ignore[assignment]
_DELETE_FINISHED = delete(_JOBS).where(
    _JOBS.c.id == bindparam("job_id"), _JOBS.c.tenant_id == bindparam("tenant_id"),
    _JOBS.c.status.in_(status_values(TERMINAL_STATUSES)))


@dataclass(frozen=True)
class RemovedJob:
    """What is left to clean up outside our database once the deletion committed.

    Attributes:
        id: the job.
        study_name: its Optuna study, if a search started.
        artifact_paths: the files its artifacts named.
    """

    id: str
    study_name: str | None
    artifact_paths: list[str]


def delete_job(session: Session, tenant_id: int, job_id: str) -> RemovedJob:
    """Delete one of the tenant's jobs, if it has ended (the caller commits).

    Raises:
        NotFoundError: no such job for this tenant.
        InvalidTransitionError: the job has not ended (cancel it first).
    """
    job = get_job(session, job_id, tenant_id)
    if JobStatus(job.status) not in TERMINAL_STATUSES:
        raise InvalidTransitionError(
            f"job {job.id} is {job.status}; only a finished job can be deleted: cancel it "
            f"(POST /v1/jobs/{job.id}/cancel) and delete it once it has ended",
            job_id=job.id, current=job.status, target="deleted")
    deleted = write_connection(session).execute(_DELETE_FINISHED, {"job_id": job.id,
                                                                  "tenant_id": tenant_id})
    if affected_rows(deleted) == 0:  # another request deleted it first
        raise NotFoundError(f"job {job_id} not found")
    return RemovedJob(job.id, job.study_name, [artifact.path for artifact in job.artifacts])


def remove_job_files(removed: RemovedJob, artifact_dir: Path) -> None:
    """Remove a deleted job's folder (``<artifact_dir>/<job id>``) and any artifact file it
    named elsewhere under ``artifact_dir``; paths outside it are left alone."""
    base = artifact_dir.resolve()
    folder = (base / removed.id).resolve()
    if folder.parent == base and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    for name in removed.artifact_paths:
        path = Path(name).resolve()
        if base in path.parents:
            path.unlink(missing_ok=True)
