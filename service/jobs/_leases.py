"""Claims and leases: who works on which job, and what happens when a worker vanishes.

Two kinds of hold, chosen so that a search can use every worker of the right
device type while the phases that need exactly one worker stay exclusive:

* the job row's lease (``lease_owner`` + ``lease_expires_at``): exclusive, held in
  ``preparing`` and ``finalizing``. Claiming a ``queued`` job takes it and moves
  the job to ``preparing`` in the same statement (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; one atomic ``UPDATE`` on SQLite, whose writers are serialised).
* ``job_participants`` rows: shared, one per worker running trials of a
  ``searching`` job. Claiming a ``searching`` job adds a row if the worker's device
  type is the one the baseline was measured on (``jobs.device_type``).

Either claim also needs the worker to have the job's latency runtime
(``jobs.latency_runtime``: a worker without it never takes the job, which waits for
one that has it) and, once the baseline's latency was timed on a device model
(``jobs.device_model``), to be of that model: every latency of a job is timed on
one kind of device. A worker never claims a job it declined (``declined``: it could not
read the data another worker had read for that job).

Both are renewed with ``renew_lease``. ``requeue_expired`` puts a job whose
exclusive lease expired back to ``queued`` (``attempts`` + 1; ``failed`` with
``too_many_attempts`` once ``attempts`` reaches ``max_attempts``), cancels it if
a cancel was pending, and drops expired participations (a searching job stays
searching: any worker can join it again). The worker that moves a searching job
to ``finalizing`` wins a guarded transition and the others' renewals fail.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from service.config import get_settings
from service.db import affected_rows, use_session
from service.jobs._clock import database_now, deadline_after
from service.jobs._guard import move_jobs, status_values
from service.jobs._state import EXCLUSIVE_STATUSES, JobStatus
from service.jobs._tables import Event, Job, JobParticipant

TOO_MANY_ATTEMPTS = "too_many_attempts"
CLAIMABLE = (JobStatus.QUEUED, JobStatus.SEARCHING)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now holds, and how.

    Attributes:
        id: the job.
        tenant_id: its tenant.
        name: its name.
        spec: the submitted ``JobSpec`` as JSON.
        status: ``preparing`` (an exclusive claim of a queued job) or ``searching``
            (a shared participation).
        attempts: how many earlier holders lost their lease on it.
        exclusive: whether the worker holds the job row's lease (else a participation).
        lease_owner: the worker.
        lease_expires_at: when the hold lapses without ``renew_lease``.
        device_type: device type of the baseline (set by this claim on a fresh job).
        baseline: baseline metrics if an earlier holder measured them.
        study_name: the Optuna study if one was created.
        device_model: the device model the baseline's latency was timed on, if it was.
    """

    id: str
    tenant_id: int
    name: str
    spec: dict[str, Any]
    status: JobStatus
    attempts: int
    exclusive: bool
    lease_owner: str
    lease_expires_at: datetime
    device_type: str | None
    baseline: dict[str, Any] | None
    study_name: str | None
    device_model: str | None = None


def _lease_seconds(value: float | None) -> float:
    return value if value is not None else get_settings().lease_seconds


def _claimed(job: Job, *, exclusive: bool, worker_id: str, expires: datetime) -> ClaimedJob:
    return ClaimedJob(id=job.id, tenant_id=job.tenant_id, name=job.name, spec=job.spec,
                      status=JobStatus(job.status), attempts=job.attempts, exclusive=exclusive,
                      lease_owner=worker_id, lease_expires_at=expires,
                      device_type=job.device_type, baseline=job.baseline,
                      study_name=job.study_name, device_model=job.device_model)


@dataclass(frozen=True)
class _Capabilities:
    """What a claiming worker offers: its device type, latency runtimes and device model."""

    device_type: str
    runtimes: tuple[str, ...]
    device_model: str | None
    declined: tuple[str, ...] = ()

    def conditions(self) -> list[Any]:
        """The jobs this worker can time (its runtime, and its device model once
        recorded) and has not declined."""
        model = (Job.device_model.is_(None) if self.device_model is None
                 else or_(Job.device_model.is_(None), Job.device_model == self.device_model))
        declined = [Job.id.not_in(self.declined)] if self.declined else []
        return [Job.latency_runtime.in_(self.runtimes), model, *declined]


def _claim_queued(session: Session, worker_id: str, offer: _Capabilities,
                  lease_seconds: float) -> ClaimedJob | None:
    device_type = offer.device_type
    candidate = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value,
               or_(Job.device_request.is_(None), Job.device_request == device_type),
               or_(Job.device_type.is_(None), Job.device_type == device_type),
               *offer.conditions())
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery())
    moved = move_jobs(
        session, JobStatus.PREPARING, Job.id == candidate, worker_id=worker_id,
        lease_seconds=lease_seconds, values={"phase": "claimed", "device_type": device_type},
        message=lambda job: f"claimed by worker {worker_id} (attempt {job.attempts + 1})")
    if not moved:
        return None
    [job] = moved
    assert job.lease_expires_at is not None
    return _claimed(job, exclusive=True, worker_id=worker_id, expires=job.lease_expires_at)


def _join_searching(session: Session, worker_id: str, offer: _Capabilities,
                    lease_seconds: float) -> ClaimedJob | None:
    joined = select(JobParticipant.job_id).where(JobParticipant.worker_id == worker_id)
    now = database_now(session)
    expires = deadline_after(session, lease_seconds)
    candidate = (
        select(Job.id, literal(worker_id), now, expires)
        .where(Job.status == JobStatus.SEARCHING.value, Job.device_type == offer.device_type,
               Job.cancel_requested.is_(False), Job.id.not_in(joined), *offer.conditions())
        .order_by(Job.created_at, Job.id)
        .limit(1))
    row = session.execute(
        insert(JobParticipant)
        .from_select(["job_id", "worker_id", "joined_at", "lease_expires_at"], candidate)
        .returning(JobParticipant.job_id, JobParticipant.lease_expires_at)).one_or_none()
    if row is None:
        return None
    job = session.get_one(Job, row.job_id)
    session.execute(insert(Event).values(job_id=job.id, kind="worker",
                                         message=f"worker {worker_id} joined the search",
                                         data={"worker_id": worker_id}, created_at=now))
    return _claimed(job, exclusive=False, worker_id=worker_id, expires=row.lease_expires_at)


def claim_next_job(bind: Engine | Session, worker_id: str, device_type: str,
                   phases: Iterable[JobStatus | str] = CLAIMABLE, *,
                   lease_seconds: float | None = None,
                   runtimes: Iterable[str] = ("torch",),
                   device_model: str | None = None,
                   declined: Collection[str] = ()) -> ClaimedJob | None:
    """Take the oldest job this worker can work on, trying ``phases`` in order.

    Args:
        bind: engine (each phase tried in its own transaction) or session.
        worker_id: a registered worker (``register_worker``).
        device_type: the worker's device type (``cpu``, ``cuda``, ...). Queued jobs
            whose spec asks for another device type, and searching jobs whose
            baseline was measured on another type, are left alone.
        phases: ``queued`` (exclusive: the job moves to ``preparing``) and/or
            ``searching`` (shared: join a running search).
        lease_seconds: lease length; default ``Settings.lease_seconds``.
        runtimes: the latency runtimes the worker can time in; jobs timed in another
            are left alone.
        device_model: the worker's device model (GPU name, or CPU model and threads);
            jobs whose baseline latency was timed on another model are left alone (None:
            every such job).
        declined: ids of jobs this worker gave up on (it cannot read their data,
            ``workers.worker``): never claimed by it again.

    Returns:
        The claimed job, or None when there is nothing to do.

    Raises:
        ValueError: a phase that cannot be claimed (preparing and finalizing are
            reached by ``transition``, not by claims).
    """
    seconds = _lease_seconds(lease_seconds)
    offer = _Capabilities(device_type, tuple(runtimes), device_model, tuple(declined))
    for phase in phases:
        status = JobStatus(phase)
        if status not in CLAIMABLE:
            raise ValueError(f"only queued and searching jobs can be claimed, not {phase!r}")
        claim = _claim_queued if status is JobStatus.QUEUED else _join_searching
        with use_session(bind) as session:
            claimed = claim(session, worker_id, offer, seconds)
        if claimed is not None:
            return claimed
    return None


def renew_lease(bind: Engine | Session, job_id: str, worker_id: str, *,
                lease_seconds: float | None = None) -> bool:
    """Extend this worker's hold on a job (exclusive lease or search participation).

    Returns:
        False when the hold is lost: the lease was requeued, the job moved on
        (e.g. another worker started finalizing) or ended. The worker must stop.
    """
    seconds = _lease_seconds(lease_seconds)
    with use_session(bind) as session:
        expires = deadline_after(session, seconds)
        exclusive = session.execute(
            update(Job).where(Job.id == job_id, Job.lease_owner == worker_id,
                              Job.status.in_(status_values(EXCLUSIVE_STATUSES)))
            .values(lease_expires_at=expires).execution_options(synchronize_session=False))
        if affected_rows(exclusive):
            return True
        still_searching = select(Job.id).where(Job.id == job_id,
                                               Job.status == JobStatus.SEARCHING.value)
        shared = session.execute(
            update(JobParticipant)
            .where(JobParticipant.job_id == job_id, JobParticipant.worker_id == worker_id,
                   JobParticipant.job_id.in_(still_searching))
            .values(lease_expires_at=expires).execution_options(synchronize_session=False))
        return bool(affected_rows(shared))


def release_lease(bind: Engine | Session, job_id: str, worker_id: str) -> None:
    """Give a job back on purpose (a worker shutting down): no attempt is counted.

    An exclusive hold in ``preparing`` or ``finalizing`` puts the job back to
    ``queued`` at once, or to ``cancelled`` when a cancel is pending (a
    cancelled job must never be claimed again); a search participation is
    simply dropped (``requeue_expired`` cancels a search left with nobody).
    """
    with use_session(bind) as session:
        for target, pending, phase, message in (
                (JobStatus.CANCELLED, True, "cancelled",
                 f"worker {worker_id} released the job; a cancel was pending, so cancelled"),
                (JobStatus.QUEUED, False, "released by worker",
                 f"worker {worker_id} released the job; queued again")):
            move_jobs(session, target, Job.id == job_id, Job.lease_owner == worker_id,
                      Job.cancel_requested.is_(pending), sources=EXCLUSIVE_STATUSES,
                      worker_id=worker_id, values={"phase": phase},
                      message=message)
        session.execute(delete(JobParticipant).where(JobParticipant.job_id == job_id,
                                                     JobParticipant.worker_id == worker_id))


def _move_expired(session: Session, condition: Any, target: JobStatus, message: str,
                  extra: dict[str, Any], sources: frozenset[JobStatus]) -> list[str]:
    jobs = move_jobs(session, target, condition, sources=sources, values=extra,
                     message=lambda job: message.format(attempts=job.attempts))
    return [job.id for job in jobs]


def requeue_expired(bind: Engine | Session, *, max_attempts: int | None = None) -> list[str]:
    """Recover jobs whose worker stopped renewing its hold (judged by the database clock).

    Safe to run from every worker at once: each job is moved by one guarded
    ``UPDATE`` and a concurrent caller's ``UPDATE`` no longer matches it.

    Args:
        bind: engine or session.
        max_attempts: lost leases after which a job fails; default ``Settings.max_attempts``.

    Returns:
        The ids of the jobs that were requeued, failed or cancelled.
    """
    limit = max_attempts if max_attempts is not None else get_settings().max_attempts
    with use_session(bind) as session:
        now = database_now(session)
        leased = EXCLUSIVE_STATUSES  # the statuses whose job row carries a lease to expire
        expired = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
        moved = _move_expired(session, and_(expired, Job.cancel_requested.is_(True)),
                              JobStatus.CANCELLED, "lease expired while a cancel was pending; "
                              "cancelled", {}, leased)
        moved += _move_expired(
            session, and_(expired, Job.attempts + 1 >= limit), JobStatus.FAILED,
            f"lease expired {limit} times; failed", {
                "attempts": Job.attempts + 1, "error_code": TOO_MANY_ATTEMPTS,
                "error_message": f"the job's worker stopped responding {limit} times "
                                 "(crash, out of memory, lost machine); look at the "
                                 "worker logs, then submit it again"}, leased)
        moved += _move_expired(session, expired, JobStatus.QUEUED,
                               "lease expired; queued again (attempt {attempts} lost)",
                               {"attempts": Job.attempts + 1, "phase": "lease expired"}, leased)
        session.execute(delete(JobParticipant).where(JobParticipant.lease_expires_at < now))
        nobody_left = and_(Job.cancel_requested.is_(True),
                           ~select(JobParticipant.job_id)
                           .where(JobParticipant.job_id == Job.id).exists())
        moved += _move_expired(session, nobody_left, JobStatus.CANCELLED,
                               "no worker left on a cancelled search; cancelled", {},
                               frozenset({JobStatus.SEARCHING}))
        return moved


def active_participants(bind: Engine | Session, job_id: str) -> list[str]:
    """Worker ids that hold ``job_id`` now (lease owner and search participants)."""
    with use_session(bind) as session:
        now = database_now(session)
        owner = session.scalars(select(Job.lease_owner).where(
            Job.id == job_id, Job.lease_owner.is_not(None), Job.lease_expires_at >= now)).all()
        shared = session.scalars(select(JobParticipant.worker_id).where(
            JobParticipant.job_id == job_id, JobParticipant.lease_expires_at >= now)
            .order_by(JobParticipant.joined_at)).all()
    return [*(worker for worker in owner if worker is not None), *shared]

