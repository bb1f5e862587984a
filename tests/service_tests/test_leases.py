from __future__ import annotations

import pytest
from sqlalchemy import Engine

from service.jobs import (
    TOO_MANY_ATTEMPTS,
    InvalidTransitionError,
    JobStatus,
    active_participants,
    claim_next_job,
    count_live_workers,
    get_job,
    register_worker,
    release_lease,
    renew_lease,
    request_cancel,
    requeue_expired,
    set_baseline,
    stop_worker,
    transition,
    worker_heartbeat,
)
from service.tenants import TenantIdentity
from tests.service_tests.conftest import make_jobs

EXPIRED = -1.0  # a lease that lapsed a second ago


def test_claim_takes_the_oldest_queued_job_exclusively(engine: Engine,
                                                       tenant: TenantIdentity) -> None:
    first, second = make_jobs(engine, tenant.id, 2)
    worker = register_worker(engine, "host", "cpu", "Intel")
    claim = claim_next_job(engine, worker, "cpu", ["queued"])
    assert claim is not None
    assert (claim.id, claim.status, claim.exclusive, claim.attempts) == (
        first, JobStatus.PREPARING, True, 0)
    assert claim.spec["name"] == "job-0" and claim.lease_owner == worker
    job = get_job(engine, first)
    assert job.lease_owner == worker and job.device_type == "cpu" and job.started_at
    assert claim_next_job(engine, worker, "cpu", ["queued"]).id == second  # type: ignore[union-attr]
    assert claim_next_job(engine, worker, "cpu", ["queued"]) is None


def test_a_worker_never_claims_a_job_it_declined(engine: Engine,
                                                 tenant: TenantIdentity) -> None:
    first, second = make_jobs(engine, tenant.id, 2)
    worker = register_worker(engine, "a", "cpu", "cpu")
    other = register_worker(engine, "b", "cpu", "cpu")
    # Queued: the declined job is passed over for the next one.
    assert claim_next_job(engine, worker, "cpu", declined={first}).id == second  # type: ignore[union-attr]
    assert claim_next_job(engine, worker, "cpu", ["queued"], declined={first}) is None
    # Searching: a declined search is not joined; another worker still joins it.
    claim_next_job(engine, other, "cpu")
    set_baseline(engine, first, {"accuracy": 0.9}, device_type="cpu")
    transition(engine, first, JobStatus.SEARCHING, worker_id=other)
    third = register_worker(engine, "c", "cpu", "cpu")
    assert claim_next_job(engine, third, "cpu", ["searching"], declined=[first]) is None
    assert claim_next_job(engine, third, "cpu", ["searching"]).id == first  # type: ignore[union-attr]


def test_claim_respects_the_requested_device(engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1, latency={"device": "cuda:0"})
    cpu = register_worker(engine, "a", "cpu", "cpu")
    gpu = register_worker(engine, "b", "cuda", "H100")
    assert claim_next_job(engine, cpu, "cpu") is None
    assert claim_next_job(engine, gpu, "cuda").id == job_id  # type: ignore[union-attr]


def test_searching_job_is_joined_by_workers_of_the_baseline_device(
        engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    first = register_worker(engine, "a", "cpu", "cpu")
    second = register_worker(engine, "b", "cpu", "cpu")
    gpu = register_worker(engine, "c", "cuda", "H100")
    claim_next_job(engine, first, "cpu")
    set_baseline(engine, job_id, {"accuracy": 0.9}, device_type="cpu")
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=first)

    assert claim_next_job(engine, gpu, "cuda") is None
    assert claim_next_job(engine, first, "cpu") is None  # already takes part
    joined = claim_next_job(engine, second, "cpu")
    assert joined is not None and not joined.exclusive
    assert (joined.id, joined.status, joined.baseline) == (job_id, JobStatus.SEARCHING,
                                                           {"accuracy": 0.9})
    assert sorted(active_participants(engine, job_id)) == sorted([first, second])
    assert renew_lease(engine, job_id, second)

    # One participant wins finalizing; the other's hold ends with the search phase.
    transition(engine, job_id, JobStatus.FINALIZING, worker_id=second)
    with pytest.raises(InvalidTransitionError):
        transition(engine, job_id, JobStatus.FINALIZING, worker_id=first)
    assert not renew_lease(engine, job_id, first)
    assert renew_lease(engine, job_id, second)
    assert active_participants(engine, job_id) == [second]


def test_renew_extends_and_fails_once_the_lease_is_requeued(engine: Engine,
                                                            tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim = claim_next_job(engine, worker, "cpu", lease_seconds=EXPIRED)
    assert claim is not None
    assert renew_lease(engine, job_id, worker, lease_seconds=60)
    assert get_job(engine, job_id).lease_expires_at > claim.lease_expires_at  # type: ignore[operator]
    assert requeue_expired(engine) == []  # renewed: not expired
    assert renew_lease(engine, job_id, worker, lease_seconds=EXPIRED)
    assert requeue_expired(engine) == [job_id]
    assert not renew_lease(engine, job_id, worker)
    with pytest.raises(InvalidTransitionError):
        transition(engine, job_id, JobStatus.SEARCHING, worker_id=worker)


def test_expired_leases_requeue_until_the_attempt_limit(engine: Engine,
                                                        tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    for attempt in range(1, 3):
        claim = claim_next_job(engine, worker, "cpu", lease_seconds=EXPIRED)
        assert claim is not None and claim.attempts == attempt - 1
        assert requeue_expired(engine, max_attempts=3) == [job_id]
        job = get_job(engine, job_id)
        assert (job.status, job.attempts, job.lease_owner) == ("queued", attempt, None)
    claim_next_job(engine, worker, "cpu", lease_seconds=EXPIRED)
    assert requeue_expired(engine, max_attempts=3) == [job_id]
    job = get_job(engine, job_id)
    assert (job.status, job.attempts, job.error_code) == ("failed", 3, TOO_MANY_ATTEMPTS)
    assert "3 times" in (job.error_message or "")
    assert requeue_expired(engine, max_attempts=3) == []


def test_expired_lease_with_pending_cancel_is_cancelled(engine: Engine,
                                                        tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, worker, "cpu", lease_seconds=EXPIRED)
    request_cancel(engine, tenant.id, job_id)
    assert requeue_expired(engine) == [job_id]
    assert get_job(engine, job_id).status == "cancelled"


def test_expired_participants_are_dropped_and_the_search_stays_open(
        engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    first = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, first, "cpu")
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=first, lease_seconds=EXPIRED)
    assert requeue_expired(engine) == []
    assert active_participants(engine, job_id) == []
    assert get_job(engine, job_id).status == "searching"
    second = register_worker(engine, "b", "cpu", "cpu")
    assert claim_next_job(engine, second, "cpu").id == job_id  # type: ignore[union-attr]


def test_cancelled_search_whose_workers_vanished_is_cancelled(engine: Engine,
                                                              tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, worker, "cpu")
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=worker, lease_seconds=EXPIRED)
    assert request_cancel(engine, tenant.id, job_id).status == "searching"
    assert requeue_expired(engine) == [job_id]
    assert get_job(engine, job_id).status == "cancelled"


def test_release_hands_the_job_back_without_counting_an_attempt(
        engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, worker, "cpu")
    release_lease(engine, job_id, worker)
    job = get_job(engine, job_id)
    assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
    assert claim_next_job(engine, worker, "cpu").id == job_id  # type: ignore[union-attr]


def test_release_with_a_pending_cancel_cancels_instead_of_requeueing(
        engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, worker, "cpu")
    assert request_cancel(engine, tenant.id, job_id).status == "preparing"
    release_lease(engine, job_id, worker)
    assert get_job(engine, job_id).status == "cancelled"
    assert claim_next_job(engine, worker, "cpu") is None  # never claimed again


def test_unclaimable_phase_is_a_programming_error(engine: Engine) -> None:
    worker = register_worker(engine, "a", "cpu", "cpu")
    with pytest.raises(ValueError, match="finalizing"):
        claim_next_job(engine, worker, "cpu", ["finalizing"])


def test_worker_heartbeat_and_liveness(engine: Engine) -> None:
    worker = register_worker(engine, "host", "cpu", "Intel", pid=42)
    assert worker_heartbeat(engine, worker)
    assert count_live_workers(engine, within_seconds=60) == 1
    stop_worker(engine, worker)
    assert not worker_heartbeat(engine, worker)
    assert count_live_workers(engine, within_seconds=60) == 0
    assert not worker_heartbeat(engine, "f" * 32)
