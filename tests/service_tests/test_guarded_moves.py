"""Every status write reads the transition table: forbid a move there and no writer makes it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, update

from service.db import session_scope
from service.errors import DatabaseError
from service.jobs import (
    ALLOWED_FROM,
    ArtifactFile,
    InvalidTransitionError,
    Job,
    JobStatus,
    allowed_sources,
    claim_next_job,
    fail_job,
    get_job,
    register_worker,
    release_lease,
    request_cancel,
    requeue_expired,
    succeed_job,
    transition,
)
from service.tenants import TenantIdentity
from tests.service_tests.conftest import make_jobs

EXPIRED = -1.0


def _force_status(engine: Engine, job_id: str, status: JobStatus) -> None:
    """Put a job in ``status`` behind the state machine's back (test setup only)."""
    with session_scope(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status.value))


@pytest.mark.parametrize("target", list(JobStatus))
def test_every_move_the_table_forbids_is_refused(engine: Engine, tenant: TenantIdentity,
                                                 target: JobStatus) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    forbidden = [source for source in JobStatus if source not in allowed_sources(target)]
    assert forbidden  # every status is unreachable from somewhere (at least itself)
    for source in forbidden:
        _force_status(engine, job_id, source)
        with pytest.raises(InvalidTransitionError, match=f"is {source.value}"):
            transition(engine, job_id, target)
        assert get_job(engine, job_id).status == source.value


@dataclass(frozen=True)
class Writer:
    """A status-writing function, set up so that it would move one job to ``target``."""

    name: str
    target: JobStatus
    setup: Callable[[Engine, int], tuple[str, str]]  # -> (job id, worker id)
    act: Callable[[Engine, int, str, str], object]


def _queued(engine: Engine, tenant_id: int) -> tuple[str, str]:
    [job_id] = make_jobs(engine, tenant_id, 1)
    return job_id, register_worker(engine, "host", "cpu", "cpu")


def _claimed(lease_seconds: float | None = None, *, cancel: bool = False,
             attempts: int = 0) -> Callable[[Engine, int], tuple[str, str]]:
    def setup(engine: Engine, tenant_id: int) -> tuple[str, str]:
        job_id, worker = _queued(engine, tenant_id)
        assert claim_next_job(engine, worker, "cpu", ["queued"], lease_seconds=lease_seconds)
        with session_scope(engine) as session:
            session.execute(update(Job).where(Job.id == job_id)
                            .values(cancel_requested=cancel, attempts=attempts))
        return job_id, worker
    return setup


def _orphaned_cancelled_search(engine: Engine, tenant_id: int) -> tuple[str, str]:
    job_id, worker = _claimed()(engine, tenant_id)
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=worker, lease_seconds=EXPIRED)
    assert request_cancel(engine, tenant_id, job_id).status == "searching"
    return job_id, worker


def _finalizing(engine: Engine, tenant_id: int) -> tuple[str, str]:
    job_id, worker = _claimed()(engine, tenant_id)
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=worker)
    transition(engine, job_id, JobStatus.FINALIZING, worker_id=worker)
    return job_id, worker


WRITERS = [
    Writer("transition", JobStatus.PREPARING, _queued,
           lambda e, t, j, w: transition(e, j, JobStatus.PREPARING)),
    Writer("fail_job", JobStatus.FAILED, _queued,
           lambda e, t, j, w: fail_job(e, j, "boom", "it broke")),
    Writer("succeed_job", JobStatus.SUCCEEDED, _finalizing,
           lambda e, t, j, w: succeed_job(e, j, worker_id=w, artifacts=[], best={"x": 1})),
    Writer("request_cancel", JobStatus.CANCELLED, _queued,
           lambda e, t, j, w: request_cancel(e, t, j)),
    Writer("claim_next_job", JobStatus.PREPARING, _queued,
           lambda e, t, j, w: claim_next_job(e, w, "cpu", ["queued"])),
    Writer("release_lease", JobStatus.QUEUED, _claimed(),
           lambda e, t, j, w: release_lease(e, j, w)),
    Writer("release_lease with a cancel pending", JobStatus.CANCELLED, _claimed(cancel=True),
           lambda e, t, j, w: release_lease(e, j, w)),
    Writer("requeue_expired", JobStatus.QUEUED, _claimed(EXPIRED),
           lambda e, t, j, w: requeue_expired(e, max_attempts=3)),
    Writer("requeue_expired at the attempt limit", JobStatus.FAILED, _claimed(EXPIRED, attempts=2),
           lambda e, t, j, w: requeue_expired(e, max_attempts=3)),
    Writer("requeue_expired with a cancel pending", JobStatus.CANCELLED,
           _claimed(EXPIRED, cancel=True), lambda e, t, j, w: requeue_expired(e, max_attempts=3)),
    Writer("requeue_expired of a deserted cancelled search", JobStatus.CANCELLED,
           _orphaned_cancelled_search, lambda e, t, j, w: requeue_expired(e, max_attempts=3)),
]


@pytest.mark.parametrize("writer", WRITERS, ids=[writer.name for writer in WRITERS])
@pytest.mark.parametrize("table_allows", [True, False], ids=["allowed", "forbidden"])
def test_each_status_writer_moves_only_where_the_table_allows(
        engine: Engine, tenant: TenantIdentity, monkeypatch: pytest.MonkeyPatch,
        writer: Writer, table_allows: bool) -> None:
    job_id, worker = writer.setup(engine, tenant.id)
    if not table_allows:
        monkeypatch.setitem(ALLOWED_FROM, writer.target, frozenset())
    with contextlib.suppress(InvalidTransitionError):
        writer.act(engine, tenant.id, job_id, worker)
    job = get_job(engine, job_id)
    # Allowed: the setup really makes the move possible, so "forbidden" tests the table.
    assert (job.status == writer.target.value) is table_allows


def test_the_cancel_flag_is_raised_only_where_cancelling_is_allowed(
        engine: Engine, tenant: TenantIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, _worker = _claimed()(engine, tenant.id)
    monkeypatch.setitem(ALLOWED_FROM, JobStatus.CANCELLED, frozenset({JobStatus.QUEUED}))
    with pytest.raises(InvalidTransitionError, match="only from queued"):
        request_cancel(engine, tenant.id, job_id)
    job = get_job(engine, job_id)
    assert (job.status, job.cancel_requested) == ("preparing", False)


def test_succeed_job_records_artifacts_best_and_progress(engine: Engine,
                                                         tenant: TenantIdentity) -> None:
    job_id, worker = _finalizing(engine, tenant.id)
    files = [ArtifactFile("safetensors", "/a/pruned.safetensors", 10, "a" * 64),
             ArtifactFile("onnx", "/a/pruned.onnx", 20, "b" * 64)]
    job = succeed_job(engine, job_id, worker_id=worker, artifacts=files, best={"accuracy": 0.9},
                      progress={"trials_complete": 4, "finalized": True})
    assert job.status == "succeeded"
    job = get_job(engine, job_id)
    assert (job.status, job.phase, job.best, job.lease_owner) == (
        "succeeded", "done", {"accuracy": 0.9}, None)
    assert job.progress == {"trials_complete": 4, "finalized": True}
    assert {(a.kind, a.path, a.size, a.sha256) for a in job.artifacts} == {
        (f.kind, f.path, f.size, f.sha256) for f in files}


def test_succeed_job_writes_nothing_when_an_artifact_cannot_be_recorded(
        engine: Engine, tenant: TenantIdentity) -> None:
    job_id, worker = _finalizing(engine, tenant.id)
    broken = ArtifactFile("onnx", "/a/pruned.onnx", 20, None)  # type: ignore[arg-type]
    with pytest.raises(DatabaseError):  # NOT NULL, on either backend
        succeed_job(engine, job_id, worker_id=worker, best={"accuracy": 0.9},
                    artifacts=[ArtifactFile("safetensors", "/a/p.safetensors", 10, "a" * 64),
                               broken])
    job = get_job(engine, job_id)
    assert (job.status, job.best, job.artifacts) == ("finalizing", None, [])


def test_succeed_job_writes_nothing_for_a_worker_without_the_lease(
        engine: Engine, tenant: TenantIdentity) -> None:
    job_id, _worker = _finalizing(engine, tenant.id)
    other = register_worker(engine, "other", "cpu", "cpu")
    with pytest.raises(InvalidTransitionError, match=f"held by worker {other}"):
        succeed_job(engine, job_id, worker_id=other, best={"accuracy": 0.9},
                    artifacts=[ArtifactFile("safetensors", "/a/p.safetensors", 10, "a" * 64)])
    job = get_job(engine, job_id)
    assert (job.status, job.best, job.artifacts) == ("finalizing", None, [])
