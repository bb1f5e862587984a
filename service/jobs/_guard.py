"""The one guarded status write: ``UPDATE jobs ... WHERE status IN (allowed) RETURNING``.

Every status change of the package (transitions, claims, releases, requeues,
cancellations, success) goes through :func:`move_jobs`, which always puts the
transition table's allowed sources of the target in the WHERE clause; a caller
can narrow them, never widen them. The status ``event`` and the end of search
participations are written in the same transaction, so the job log is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from service.config import get_settings
from service.errors import InvalidTransitionError, NotFoundError
from service.jobs._clock import database_now, deadline_after
from service.jobs._state import EXCLUSIVE_STATUSES, JobStatus, allowed_sources
from service.jobs._tables import Event, Job, JobParticipant

MAX_ERROR_MESSAGE = 10_000


def status_values(values: Iterable[JobStatus]) -> list[str]:
    """Statuses as the strings stored in ``jobs.status`` (sorted, for stable SQL)."""
    return sorted(status.value for status in values)


def guarded_sources(target: JobStatus,
                    narrowed_to: Iterable[JobStatus] | None = None) -> frozenset[JobStatus]:
    """The statuses a move to ``target`` may start from: the table's, narrowed if asked."""
    sources = allowed_sources(target)
    return sources if narrowed_to is None else sources & frozenset(narrowed_to)


def worker_holds_job(worker_id: str) -> ColumnElement[bool]:
    """SQL condition: ``worker_id`` holds the job's lease or takes part in its search."""
    participates = exists().where(JobParticipant.job_id == Job.id,
                                  JobParticipant.worker_id == worker_id)
    return or_(
        and_(Job.status.in_(status_values(EXCLUSIVE_STATUSES)), Job.lease_owner == worker_id),
        and_(Job.status == JobStatus.SEARCHING.value, participates),
        Job.status == JobStatus.QUEUED.value,
    )


def _lease_seconds(value: float | None) -> float:
    return value if value is not None else get_settings().lease_seconds


def _column_values(session: Session, target: JobStatus, worker_id: str | None,
                   lease_seconds: float | None, values: dict[str, Any]) -> dict[str, Any]:
    """Status, timestamps and lease of a move to ``target``, then the caller's columns."""
    if {"status", "lease_owner", "lease_expires_at"} & set(values):
        raise TypeError("the status and the lease are written by the move itself")
    now = database_now(session)
    columns: dict[str, Any] = {"status": target.value, "updated_at": now, **values}
    if isinstance(columns.get("error_message"), str):
        columns["error_message"] = columns["error_message"][:MAX_ERROR_MESSAGE]
    if target is JobStatus.PREPARING:
        columns["started_at"] = func.coalesce(Job.started_at, now)
    if target.is_terminal():
        columns["finished_at"] = now
    if target.is_exclusive() and worker_id is not None:
        columns["lease_owner"] = worker_id
        columns["lease_expires_at"] = deadline_after(session, _lease_seconds(lease_seconds))
    else:
        columns["lease_owner"] = None
        columns["lease_expires_at"] = None
    return columns


def _after_move(session: Session, job: Job, target: JobStatus, worker_id: str | None,
                lease_seconds: float | None, message: str | None) -> None:
    """Participants and the job log, in the move's transaction."""
    if target is JobStatus.SEARCHING and worker_id is not None:
        session.execute(insert(JobParticipant).values(
            job_id=job.id, worker_id=worker_id, joined_at=database_now(session),
            lease_expires_at=deadline_after(session, _lease_seconds(lease_seconds))))
    elif target is not JobStatus.SEARCHING:
        # Leaving the search phase ends every participation: their renewals fail.
        session.execute(delete(JobParticipant).where(JobParticipant.job_id == job.id))
    text = message or f"status: {target.value}" + (f" ({job.phase})" if job.phase else "")
    data: dict[str, Any] = {"status": target.value}
    if worker_id is not None:
        data["worker_id"] = worker_id
    if job.error_code:
        data["error_code"] = job.error_code
    session.execute(insert(Event).values(job_id=job.id, kind="status", message=text, data=data,
                                         created_at=database_now(session)))


def move_jobs(session: Session, target: JobStatus, *where: ColumnElement[bool],
              sources: Iterable[JobStatus] | None = None, worker_id: str | None = None,
              lease_seconds: float | None = None, values: dict[str, Any] | None = None,
              message: str | Callable[[Job], str] | None = None) -> list[Job]:
    """Move the jobs matching ``where`` to ``target``, if and only if the table allows it.

    Args:
        session: the transaction to write in.
        target: the status to move to.
        *where: the caller's conditions (which job, who holds it, ...).
        sources: narrow the table's allowed sources of ``target`` to these.
        worker_id: the worker making the move. Moving to ``preparing`` or
            ``finalizing`` gives it the exclusive lease; moving to ``searching``
            makes it the first participant; it is named in the status event.
            Whether it holds the job is the caller's condition (``worker_holds_job``).
        lease_seconds: lease length; default ``Settings.lease_seconds``.
        values: other columns to write in the same statement.
        message: the status event's line, or a function of the moved job giving it
            (default ``status: <target> (<phase>)``).

    Returns:
        The moved jobs as updated; empty when none matched (no error: the caller
        decides whether that is a refusal).
    """
    allowed = guarded_sources(target, sources)
    columns = _column_values(session, target, worker_id, lease_seconds, values or {})
    statement = (update(Job).where(Job.status.in_(status_values(allowed)), *where)
                 .values(**columns).returning(Job)
                 .execution_options(synchronize_session=False))
    jobs = list(session.scalars(statement).all())
    for job in jobs:
        _after_move(session, job, target, worker_id, lease_seconds,
                    message(job) if callable(message) else message)
    return jobs


def refusal(session: Session, job_id: str, target: JobStatus, sources: Iterable[JobStatus],
            worker_id: str | None = None) -> Exception:
    """The error explaining why a guarded move of one job matched no row."""
    current = session.scalar(select(Job.status).where(Job.id == job_id))
    if current is None:
        return NotFoundError(f"job {job_id} does not exist")
    allowed = ", ".join(status_values(sources)) or "no status"
    held = f" held by worker {worker_id}" if worker_id is not None else ""
    return InvalidTransitionError(
        f"job {job_id} is {current}; it can become {target.value} only from "
        f"{allowed}{held}", job_id=job_id, current=current, target=target.value)
