"""Status changes of one job: transition, fail, succeed, cancel.

Each is one guarded ``UPDATE ... WHERE status IN (allowed) RETURNING`` (``_guard``).
Zero rows back means the job was not in an allowed status (someone else moved
it, or the caller lost its lease): the caller gets ``InvalidTransitionError``,
never a silent no-op.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, and_, exists, insert, or_, select, update
from sqlalchemy.orm import Session

from service.db import use_session
from service.errors import InvalidTransitionError, NotFoundError
from service.jobs._clock import database_now
from service.jobs._guard import (
    guarded_sources,
    move_jobs,
    refusal,
    status_values,
    worker_holds_job,
)
from service.jobs._records import ArtifactFile, record_artifact
from service.jobs._state import JobStatus, allowed_sources
from service.jobs._tables import Event, Job, JobParticipant
from service.tables import is_valid_id

# Columns a transition may write besides the status and the lease.
UPDATABLE_FIELDS = frozenset({"phase", "progress", "baseline", "best", "error_code",
                              "error_message", "study_name", "device_type"})


def _as_statuses(value: JobStatus | str | Iterable[JobStatus | str]) -> set[JobStatus]:
    if isinstance(value, JobStatus | str):
        return {JobStatus(value)}
    return {JobStatus(item) for item in value}


def transition(bind: Engine | Session, job_id: str, to_status: JobStatus | str, *,
               expected_from: JobStatus | str | Iterable[JobStatus | str] | None = None,
               worker_id: str | None = None, lease_seconds: float | None = None,
               **fields: Any) -> Job:
    """Move a job to ``to_status`` if, and only if, the move is allowed now.

    Args:
        bind: engine (commits here) or session (the caller commits).
        job_id: the job.
        to_status: the target status.
        expected_from: narrow the allowed sources to this status (or these).
        worker_id: the worker making the move; it must hold the job (its exclusive
            lease, or a participation in the search). Moving to ``preparing`` or
            ``finalizing`` gives it the exclusive lease; moving to ``searching``
            makes it the first participant.
        lease_seconds: lease length; default ``Settings.lease_seconds``.
        **fields: columns to write in the same statement: phase, progress, baseline,
            best, error_code, error_message, study_name, device_type.

    Returns:
        The job as updated.

    Raises:
        InvalidTransitionError: the job is in no allowed status (or not held by
            ``worker_id``); nothing was changed.
        NotFoundError: there is no such job.
        TypeError: a field that transitions do not write.
    """
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise TypeError(f"transition() cannot set {sorted(unknown)}; "
                        f"settable: {sorted(UPDATABLE_FIELDS)}")
    target = JobStatus(to_status)
    narrowed = None if expected_from is None else _as_statuses(expected_from)
    conditions = [Job.id == job_id]
    if worker_id is not None:
        conditions.append(worker_holds_job(worker_id))
    with use_session(bind) as session:
        moved = move_jobs(session, target, *conditions, sources=narrowed, worker_id=worker_id,
                          lease_seconds=lease_seconds, values=fields)
        if not moved:
            raise refusal(session, job_id, target, guarded_sources(target, narrowed),
                          worker_id)
        return moved[0]


def fail_job(bind: Engine | Session, job_id: str, code: str, message: str, *,
             worker_id: str | None = None) -> Job:
    """Move a job to ``failed`` with an error code and a message for the user.

    Raises:
        InvalidTransitionError: the job already ended (or ``worker_id`` does not hold it).
        NotFoundError: there is no such job.
    """
    return transition(bind, job_id, JobStatus.FAILED, worker_id=worker_id,
                      error_code=code, error_message=message)


def succeed_job(bind: Engine | Session, job_id: str, *, worker_id: str | None,
                artifacts: Iterable[ArtifactFile], best: dict[str, Any],
                progress: dict[str, Any] | None = None, phase: str = "done") -> Job:
    """Record a finalizing job's files and best result and make it succeed, in one transaction.

    A worker that dies (or loses its lease) before this leaves no artifact rows
    pointing at files that the next finalizing worker will replace.

    Args:
        bind: engine (one transaction, committed here) or session (the caller commits).
        job_id: the job, in ``finalizing``.
        worker_id: the worker holding its lease.
        artifacts: the files it produced (an earlier row of the same kind is replaced).
        best: the final metrics and plan of the best trial.
        progress: the last progress summary, if it changed.
        phase: the job's last phase line.

    Returns:
        The succeeded job.

    Raises:
        InvalidTransitionError: the job is not finalizing under ``worker_id``'s lease;
            nothing was written.
        NotFoundError: there is no such job.
    """
    fields: dict[str, Any] = {"best": best, "phase": phase}
    if progress is not None:
        fields["progress"] = progress
    with use_session(bind) as session:
        job = transition(session, job_id, JobStatus.SUCCEEDED,
                         expected_from=JobStatus.FINALIZING, worker_id=worker_id, **fields)
        for artifact in artifacts:
            record_artifact(session, job_id, artifact.kind, artifact.path, artifact.size,
                            artifact.sha256)
        return job


def request_cancel(bind: Engine | Session, tenant_id: int | None, job_id: str) -> Job:
    """Cancel a job: at once when nobody works on it, else by raising its cancel flag.

    A queued job, or a searching job with no participant, goes straight to
    ``cancelled``. A job a worker holds gets ``cancel_requested``; its worker
    polls ``is_cancel_requested`` and moves it to ``cancelled``. Cancelling a
    cancelled job returns it unchanged.

    Args:
        bind: engine or session.
        tenant_id: the caller's tenant (another tenant's job is not found); None
            for workers and administrators.
        job_id: the job.

    Returns:
        The job after the request.

    Raises:
        NotFoundError: no such job for this tenant.
        InvalidTransitionError: the job already succeeded or failed.
    """
    if not is_valid_id(job_id):
        raise NotFoundError(f"job {job_id} not found")
    scope = [Job.id == job_id]
    if tenant_id is not None:
        scope.append(Job.tenant_id == tenant_id)
    nobody_holds_it = or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.SEARCHING.value,
             ~exists().where(JobParticipant.job_id == Job.id)))
    with use_session(bind) as session:
        cancelled = move_jobs(session, JobStatus.CANCELLED, *scope, nobody_holds_it,
                              values={"cancel_requested": True, "phase": "cancelled by request"})
        if cancelled:
            return cancelled[0]
        # The flag asks the holder for the same move, so it is raised only where the
        # table allows that move.
        job = session.scalars(
            update(Job).where(*scope, Job.status.in_(
                status_values(allowed_sources(JobStatus.CANCELLED))))
            .values(cancel_requested=True, updated_at=database_now(session))
            .returning(Job).execution_options(synchronize_session=False)).one_or_none()
        if job is not None:
            session.execute(insert(Event).values(
                job_id=job.id, kind="cancel", message="cancellation requested",
                created_at=database_now(session)))
            return job
        job = session.scalars(select(Job).where(*scope)).one_or_none()
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        if job.status == JobStatus.CANCELLED.value:
            return job
        if not JobStatus(job.status).is_terminal():
            raise refusal(session, job_id, JobStatus.CANCELLED,
                          allowed_sources(JobStatus.CANCELLED))
        raise InvalidTransitionError(f"job {job_id} already {job.status}; there is nothing "
                                     "to cancel", job_id=job_id, current=job.status,
                                     target=JobStatus.CANCELLED.value)


def is_cancel_requested(bind: Engine | Session, job_id: str) -> bool:
    """Whether the workers on ``job_id`` should stop (cancel asked, or the job is gone/ended)."""
    with use_session(bind) as session:
        row = session.execute(select(Job.cancel_requested, Job.status)
                              .where(Job.id == job_id)).one_or_none()
    if row is None:
        return True
    return bool(row.cancel_requested) or JobStatus(row.status).is_terminal()
