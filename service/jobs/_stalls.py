"""Searches that stopped moving: one ``stall`` event per stall, however many workers saw it.

Every participant of a search runs the stall detector, so several may notice
the same stall at once. The report locks the job's row (``FOR UPDATE``, as
Optuna does before a trial's state change) and writes the event only when no
event carries the same mark (the number of finished trials when it stalled):
the job's log says it once, and the Prometheus counter counts it once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session

from service.db import use_session
from service.jobs._clock import database_now
from service.jobs._state import JobStatus
from service.jobs._tables import Event, Job

STALL_EVENT = "stall"


def report_stall(bind: Engine | Session, job_id: str, mark: int, message: str,
                 data: dict[str, Any] | None = None) -> bool:
    """Add a ``stall`` event to a searching job unless this stall is already reported.

    Args:
        bind: engine (one transaction, committed here) or session.
        job_id: the job.
        mark: what identifies the stall (the count of finished trials it stalled at).
        message: one line for the user.
        data: JSON details (the mark is added).

    Returns:
        True when this call wrote the event; False when another participant
        reported the same stall first, or the job is no longer searching.
    """
    with use_session(bind) as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
        if status != JobStatus.SEARCHING.value:
            return False
        earlier = session.scalars(select(Event.data).where(Event.job_id == job_id,
                                                           Event.kind == STALL_EVENT)).all()
        if any(isinstance(seen, dict) and seen.get("mark") == mark for seen in earlier):
            return False
        session.execute(insert(Event).values(
            job_id=job_id, kind=STALL_EVENT, message=message, data={**(data or {}), "mark": mark},
            created_at=database_now(session)))
        return True


def count_stalls(bind: Engine | Session) -> int:
    """How many stalls were ever reported (every job's ``stall`` events)."""
    with use_session(bind) as session:
        return int(session.scalar(select(func.count()).select_from(Event)
                                  .where(Event.kind == STALL_EVENT)) or 0)
