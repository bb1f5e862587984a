"""Worker registration and liveness."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Interval, bindparam, func, select, update
from sqlalchemy.orm import Session

from service.db import UTCDateTime, affected_rows, is_postgresql, use_session, utcnow
from service.jobs._clock import database_now, deadline_after
from service.jobs._queries import JobRead
from service.jobs._state import JobStatus
from service.jobs._tables import Job, Worker


def register_worker(bind: Engine | Session, host: str, device_type: str, device_name: str,
                    *, pid: int | None = None, runtimes: Sequence[str] = ("torch",)) -> str:
    """Record a starting worker.

    Args:
        bind: engine or session.
        host: machine name.
        device_type: ``cpu``, ``cuda``, ... (what claims match jobs against).
        device_name: e.g. ``NVIDIA H100 80GB HBM3``.
        pid: process id, for operators.
        runtimes: the latency runtimes it can time in (what claims match jobs against).

    Returns:
        The worker id to claim and heartbeat with.
    """
    with use_session(bind) as session:
        now = database_now(session)
        worker = Worker(host=host[:255], device_type=device_type[:16],
                        device_name=device_name[:255], pid=pid, started_at=now,
                        heartbeat_at=now, runtimes=list(runtimes))
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


# Built once per backend: GET /v1/jobs/{id} asks for every waiting job, and building a
# statement (or running it through the ORM) costs more than running it. Liveness is
# judged by the database's clock on PostgreSQL, as in deadline_after.
_WORKERS = Worker.__table__.c
_CAPABILITIES = select(_WORKERS.device_type, _WORKERS.device_name, _WORKERS.runtimes).where(
    _WORKERS.stopped_at.is_(None))
_LIVE_CAPABILITIES = {
    "postgresql": _CAPABILITIES.where(
        _WORKERS.heartbeat_at >= func.now() - bindparam("within", type_=Interval())),
    "sqlite": _CAPABILITIES.where(
        _WORKERS.heartbeat_at >= bindparam("cutoff", type_=UTCDateTime)),
}


def _live_capabilities(connection: Connection, within_seconds: float
                       ) -> tuple[Any, dict[str, Any]]:
    """The statement and parameters of the live workers' device and runtimes."""
    within = timedelta(seconds=within_seconds)
    if is_postgresql(connection):
        return _LIVE_CAPABILITIES["postgresql"], {"within": within}
    return _LIVE_CAPABILITIES["sqlite"], {"cutoff": utcnow() - within}


class LiveWorkers:
    """The live workers' capabilities, read from the database at most once per
    ``max_age_seconds`` (the API keeps one per process: a busy server answers
    ``GET /v1/jobs/{id}`` for many waiting jobs, and what it tells them may be that much
    older than the heartbeats; 0 reads every time).

    Args:
        within_seconds: a worker is live when its last heartbeat is this recent.
        max_age_seconds: how long one read answers.
    """

    def __init__(self, within_seconds: float, max_age_seconds: float = 1.0) -> None:
        self.within_seconds = within_seconds
        self.max_age_seconds = max_age_seconds
        # (when, rows): replaced whole, so the route threads need no lock (two of them
        # reading at once both query, and either answer is right).
        self._read: tuple[float, list[Any]] | None = None

    def read(self, connection: Connection) -> list[Any]:
        """Device type, device name and runtimes of every live worker."""
        now = time.monotonic()
        read = self._read
        if read is not None and now - read[0] < self.max_age_seconds:
            return read[1]
        rows = list(connection.execute(
            *_live_capabilities(connection, self.within_seconds)).all())
        self._read = (now, rows)
        return rows


def waiting_for(bind: Engine | Connection | Session, job: Job | JobRead,
                live: LiveWorkers) -> str | None:
    """What a queued (or deserted searching) job waits for when no live worker can take
    it: a worker with its latency runtime, device type or device model; None when a
    live worker can (or the job is not waiting).

    Args:
        bind: engine, connection or session.
        job: the job row.
        live: the live workers (``LiveWorkers(within_seconds, max_age_seconds=0)``: read now).
    """
    if job.status not in (JobStatus.QUEUED.value, JobStatus.SEARCHING.value):
        return None
    device_type = job.device_type or job.device_request
    if isinstance(bind, Connection):
        workers = live.read(bind)
    else:
        with use_session(bind) as session:
            workers = live.read(session.connection())
    for worker in workers:
        if ((device_type is None or worker.device_type == device_type)
                and job.latency_runtime in (worker.runtimes or ["torch"])
                and (job.device_model is None or worker.device_name == job.device_model)):
            return None
    needs = []
    if job.latency_runtime != "torch":
        needs.append(f"the {job.latency_runtime} latency runtime")
    if job.device_model is not None:
        needs.append(f"the device its baseline was timed on ({job.device_model})")
    elif device_type is not None:
        needs.append(f"a {device_type} device")
    if not needs:
        return "waiting for a worker; none is running"
    reason = (f"waiting for a worker with {' and '.join(needs)}; "
              f"{len(workers)} live worker{'s' if len(workers) != 1 else ''}, none has it")
    if job.latency_runtime == "tensorrt":
        reason += ("; no Topiary worker can time in TensorRT yet, so resubmit with "
                   "latency.runtime onnxruntime (CUDA provider) or torch")
    elif job.latency_runtime != "torch":
        reason += f" (install topiary[{job.latency_runtime}] on a worker)"
    return reason
