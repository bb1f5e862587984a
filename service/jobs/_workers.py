"""Worker registration and liveness."""

from __future__ import annotations

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from service.db import affected_rows, use_session
from service.jobs._clock import database_now, deadline_after
from service.jobs._tables import Worker


def register_worker(bind: Engine | Session, host: str, device_type: str, device_name: str,
                    *, pid: int | None = None) -> str:
    """Record a starting worker.

    Args:
        bind: engine or session.
        host: machine name.
        device_type: ``cpu``, ``cuda``, ... (what claims match jobs against).
        device_name: e.g. ``NVIDIA H100 80GB HBM3``.
        pid: process id, for operators.

    Returns:
        The worker id to claim and heartbeat with.
    """
    with use_session(bind) as session:
        now = database_now(session)
        worker = Worker(host=host[:255], device_type=device_type[:16],
                        device_name=device_name[:255], pid=pid, started_at=now,
                        heartbeat_at=now)
        session.add(worker)
        session.flush()
        return worker.id


def worker_heartbeat(bind: Engine | Session, worker_id: str) -> bool:
    """Mark the worker alive now. Returns False for an unknown or stopped worker."""
    with use_session(bind) as session:
        result = session.execute(
            update(Worker).where(Worker.id == worker_id, Worker.stopped_at.is_(None))
            .values(heartbeat_at=database_now(session)))
        return bool(affected_rows(result))


def stop_worker(bind: Engine | Session, worker_id: str) -> None:
    """Mark the worker as stopped (it released its jobs first)."""
    with use_session(bind) as session:
        session.execute(update(Worker).where(Worker.id == worker_id)
                        .values(stopped_at=database_now(session)))


def count_live_workers(bind: Engine | Session, within_seconds: float) -> int:
    """Workers that are not stopped and sent a heartbeat in the last ``within_seconds``."""
    with use_session(bind) as session:
        cutoff = deadline_after(session, -within_seconds)
        return session.scalar(select(func.count()).select_from(Worker).where(
            Worker.stopped_at.is_(None), Worker.heartbeat_at >= cutoff)) or 0
