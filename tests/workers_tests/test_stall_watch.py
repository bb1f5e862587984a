"""The job stall detector: its bound, one report per stall, recovery, then a failure with a reason.

The watch runs against our real database (SQLite and PostgreSQL) and an in-memory
study whose trial times the test sets; its clock is the test's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from sqlalchemy import Engine

from search.budget import SURPLUS_ATTR
from search.stall import SearchStalled, StallPolicy, standing
from service.config import Settings
from service.jobs import (
    STALL_EVENT,
    JobStatus,
    claim_next_job,
    count_stalls,
    fail_job,
    list_events,
    register_worker,
    report_stall,
    set_baseline,
    transition,
)
from service.tenants import TenantIdentity, get_or_create_tenant
from tests.service_tests.conftest import make_jobs
from workers.stall import StallWatch

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

T0 = datetime(2026, 1, 1, 12, 0, 0)
FLOOR = 60.0


def _trial(state: TrialState, start: datetime, seconds: float | None = None,
           **attrs: Any) -> optuna.trial.FrozenTrial:
    end = None if seconds is None else start + timedelta(seconds=seconds)
    trial = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                         user_attrs=attrs)
    trial.datetime_start, trial.datetime_complete = start, end
    return trial


def _study(*trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study()
    for trial in trials:
        study.add_trial(trial)
    return study


def test_the_bound_is_a_multiple_of_the_longest_counted_trial_with_a_floor() -> None:
    policy = StallPolicy(floor_seconds=FLOOR, trial_multiple=3)
    short = [_trial(TrialState.COMPLETE, T0, 10)]
    assert policy.bound_seconds(short) == FLOOR
    long = [*short, _trial(TrialState.PRUNED, T0, 40),
            _trial(TrialState.COMPLETE, T0, 500, **{SURPLUS_ATTR: True}),  # never counts
            _trial(TrialState.FAIL, T0, 900)]
    assert policy.bound_seconds(long) == 120


def test_idle_time_counts_from_the_last_finished_trial_or_from_when_watching_began() -> None:
    policy = StallPolicy(floor_seconds=FLOOR)
    trials = _study(_trial(TrialState.COMPLETE, T0, 10),
                    _trial(TrialState.RUNNING, T0)).get_trials()
    now = T0 + timedelta(seconds=100)
    seen = standing(trials, policy, watching_since=T0, now=now)
    assert (seen.finished, seen.idle_seconds, seen.running) == (1, 90, (1,))
    assert seen.stalled and not seen.stuck
    joined_late = standing(trials, policy, watching_since=now - timedelta(seconds=5), now=now)
    assert joined_late.idle_seconds == 5 and not joined_late.stalled
    assert standing(trials, policy, watching_since=T0, now=T0 + timedelta(seconds=130)).stuck


@pytest.fixture
def tenant(engine: Engine) -> TenantIdentity:
    return get_or_create_tenant(engine, "acme")


def _searching_job(engine: Engine, tenant: TenantIdentity) -> tuple[str, str]:
    [job_id] = make_jobs(engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim_next_job(engine, worker, "cpu")
    set_baseline(engine, job_id, {"accuracy": 0.9}, device_type="cpu")
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=worker)
    return job_id, worker


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _watch(engine: Engine, job_id: str, worker: str, clock: Clock) -> StallWatch:
    runtime: Any = SimpleNamespace(engine=engine, worker_id=worker,
                                   settings=Settings(stall_floor_seconds=FLOOR))
    run: Any = SimpleNamespace(job=SimpleNamespace(id=job_id))
    return StallWatch(runtime, run, clock=clock)


def test_a_stall_is_reported_once_then_the_job_is_failed_with_a_reason(
        engine: Engine, tenant: TenantIdentity) -> None:
    job_id, worker = _searching_job(engine, tenant)
    study = _study(_trial(TrialState.COMPLETE, T0 - timedelta(seconds=10), 10),
                   _trial(TrialState.RUNNING, T0))
    clock = Clock(T0)
    watches = [_watch(engine, job_id, worker, clock) for _ in range(2)]  # two participants

    clock.now = T0 + timedelta(seconds=FLOOR - 1)
    for watch in watches:
        watch(study)
    assert count_stalls(engine) == 0

    clock.now = T0 + timedelta(seconds=FLOOR + 1)
    for watch in watches:
        watch(study)
        watch(study)
    [stall] = [e for e in list_events(engine, job_id) if e.kind == STALL_EVENT]
    assert "no trial finished for 61 s" in stall.message and "running trials 1" in stall.message
    assert stall.data is not None and stall.data["mark"] == 1 and stall.data["running"] == [1]
    assert count_stalls(engine) == 1

    clock.now = T0 + timedelta(seconds=2 * FLOOR)
    with pytest.raises(SearchStalled) as stuck:
        watches[0](study)
    assert stuck.value.code == "search_stalled"
    assert "no progress for 120 s" in str(stuck.value)
    assert "TOPIARY_STALL_FLOOR_SECONDS" in str(stuck.value)


def test_progress_resets_the_watch_and_a_new_stall_is_a_new_report(
        engine: Engine, tenant: TenantIdentity) -> None:
    job_id, worker = _searching_job(engine, tenant)
    study = _study(_trial(TrialState.RUNNING, T0))
    clock = Clock(T0)
    watch = _watch(engine, job_id, worker, clock)
    clock.now = T0 + timedelta(seconds=FLOOR + 1)
    watch(study)
    study.add_trial(_trial(TrialState.COMPLETE, T0 + timedelta(seconds=FLOOR), 2))
    clock.now = T0 + timedelta(seconds=FLOOR + 3)
    watch(study)  # moving again: nothing to report
    clock.now = T0 + timedelta(seconds=2 * FLOOR + 10)
    watch(study)
    assert [e.data["mark"] for e in list_events(engine, job_id)
            if e.kind == STALL_EVENT and e.data] == [0, 1]


def test_a_job_that_left_searching_gets_no_stall_report(engine: Engine,
                                                        tenant: TenantIdentity) -> None:
    job_id, _worker = _searching_job(engine, tenant)
    fail_job(engine, job_id, "search_stalled", "stuck")
    assert not report_stall(engine, job_id, 0, "late")
    assert count_stalls(engine) == 0
