from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError

from service.db import session_scope
from service.errors import DatabaseError
from service.jobs import (
    ALLOWED_FROM,
    InvalidTransitionError,
    Job,
    JobParticipant,
    JobStatus,
    NotFoundError,
    can_transition,
    claim_next_job,
    fail_job,
    get_job,
    is_cancel_requested,
    list_events,
    register_worker,
    request_cancel,
    transition,
)
from service.tenants import TenantIdentity
from tests.service_tests.conftest import make_jobs

HAPPY_PATH = [JobStatus.PREPARING, JobStatus.SEARCHING, JobStatus.FINALIZING,
              JobStatus.SUCCEEDED]


def test_terminal_statuses_and_the_table() -> None:
    assert {s for s in JobStatus if s.is_terminal()} == {
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    for target, sources in ALLOWED_FROM.items():
        assert not any(source.is_terminal() for source in sources), target
    for source in JobStatus:
        if not source.is_terminal():
            assert can_transition(source, JobStatus.FAILED)
            assert can_transition(source, JobStatus.CANCELLED)
    assert not can_transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)
    assert not can_transition(JobStatus.SEARCHING, JobStatus.PREPARING)


def test_happy_path_sets_timestamps_and_logs_every_step(engine: Engine,
                                                        tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    for status in HAPPY_PATH:
        job = transition(engine, job_id, status, phase=f"now {status.value}")
        assert job.status == status.value and job.phase == f"now {status.value}"
    job = get_job(engine, job_id)
    assert job.started_at is not None and job.finished_at is not None
    assert job.created_at <= job.started_at <= job.finished_at
    statuses = [e.data["status"] for e in list_events(engine, job_id) if e.kind == "status"]
    assert statuses == ["queued", *[s.value for s in HAPPY_PATH]]


@pytest.mark.parametrize("target", [JobStatus.SUCCEEDED, JobStatus.FINALIZING,
                                    JobStatus.SEARCHING, JobStatus.QUEUED])
def test_disallowed_transition_is_refused_and_changes_nothing(
        engine: Engine, tenant: TenantIdentity, target: JobStatus) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    with pytest.raises(InvalidTransitionError, match="is queued") as error:
        transition(engine, job_id, target)
    assert error.value.current == "queued" and error.value.target == target.value
    assert get_job(engine, job_id).status == "queued"


def test_terminal_job_never_moves_again(engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    fail_job(engine, job_id, "boom", "it broke")
    for target in JobStatus:
        with pytest.raises(InvalidTransitionError):
            transition(engine, job_id, target)
    job = get_job(engine, job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "boom", "it broke")


def test_expected_from_narrows_the_sources(engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    with pytest.raises(InvalidTransitionError):
        transition(engine, job_id, JobStatus.CANCELLED, expected_from=JobStatus.SEARCHING)
    transition(engine, job_id, JobStatus.CANCELLED, expected_from=[JobStatus.QUEUED])


def test_unknown_job_and_unknown_field(engine: Engine) -> None:
    with pytest.raises(NotFoundError):
        transition(engine, "0" * 32, JobStatus.PREPARING)
    with pytest.raises(TypeError, match="tenant_id"):
        transition(engine, "0" * 32, JobStatus.PREPARING, tenant_id=3)


def test_worker_must_hold_the_job_to_move_it(engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    owner = register_worker(engine, "a", "cpu", "cpu")
    other = register_worker(engine, "b", "cpu", "cpu")
    claim_next_job(engine, owner, "cpu", ["queued"])
    with pytest.raises(InvalidTransitionError, match=f"held by worker {other}"):
        transition(engine, job_id, JobStatus.SEARCHING, worker_id=other)
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=owner)
    # Moving to searching made the owner a participant; the exclusive lease is gone.
    with session_scope(engine) as session:
        job = session.get_one(Job, job_id)
        assert job.lease_owner is None
        participants = session.scalars(select(JobParticipant.worker_id)).all()
    assert participants == [owner]
    transition(engine, job_id, JobStatus.FINALIZING, worker_id=owner)
    assert get_job(engine, job_id).lease_owner == owner


def test_concurrent_transitions_exactly_one_wins(engine: Engine,
                                                 tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    transition(engine, job_id, JobStatus.PREPARING)
    transition(engine, job_id, JobStatus.SEARCHING)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def finalize() -> None:
        barrier.wait()
        try:
            transition(engine, job_id, JobStatus.FINALIZING)
            outcomes.append("won")
        except InvalidTransitionError:
            outcomes.append("refused")

    threads = [threading.Thread(target=finalize) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]


def test_database_check_constraint_rejects_unknown_status(engine: Engine,
                                                          tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    with pytest.raises(DatabaseError) as error, session_scope(engine) as session:
        session.execute(text("UPDATE jobs SET status = 'exploded' WHERE id = :id"),
                        {"id": job_id})
    assert isinstance(error.value.__cause__, IntegrityError)


def test_cancel_queued_job_is_immediate(engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    job = request_cancel(engine, tenant.id, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert request_cancel(engine, tenant.id, job_id).status == "cancelled"  # idempotent


def test_cancel_running_job_raises_the_flag_for_its_worker(engine: Engine,
                                                           tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, worker, "cpu")
    assert not is_cancel_requested(engine, job_id)
    job = request_cancel(engine, tenant.id, job_id)
    assert job.status == "preparing" and job.cancel_requested
    assert is_cancel_requested(engine, job_id)
    transition(engine, job_id, JobStatus.CANCELLED, worker_id=worker)
    assert get_job(engine, job_id).status == "cancelled"


def test_cancel_searching_job_without_workers_is_immediate(engine: Engine,
                                                           tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    transition(engine, job_id, JobStatus.PREPARING)
    transition(engine, job_id, JobStatus.SEARCHING)  # no worker: no participant
    assert request_cancel(engine, tenant.id, job_id).status == "cancelled"


def test_cancel_is_scoped_and_refused_after_success(engine: Engine,
                                                    tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    with pytest.raises(NotFoundError):
        request_cancel(engine, tenant.id + 1, job_id)
    for status in HAPPY_PATH:
        transition(engine, job_id, status)
    with pytest.raises(InvalidTransitionError, match="already succeeded"):
        request_cancel(engine, tenant.id, job_id)
