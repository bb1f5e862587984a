"""Real worker processes on PostgreSQL: sharing a search, surviving SIGKILL, SIGTERM."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import select

from core.catalog import CHECKPOINT_FORMATS
from search.storage import open_storage
from service.config import Settings
from service.db import create_engine_for, session_scope
from service.jobs import Artifact, JobStatus, get_job
from service.tenants import get_or_create_tenant
from tests.support import ChildProcess, program_environment, start_worker, wait_for
from tests.support.cluster import FAULT_HEARTBEAT_SECONDS
from tests.workers_tests.conftest import make_settings, submit

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def postgres_pair(migrated_postgres_url: str, postgres_url: str) -> tuple[str, str]:
    """Our database (migrated) and Optuna's (empty), both fresh PostgreSQL databases."""
    return migrated_postgres_url, postgres_url


@pytest.fixture
def start(started_processes: list[ChildProcess]) -> Callable[[Settings, str], ChildProcess]:
    """Start a worker on ``settings`` (killed at the end of the test if still running)."""
    def start_one(settings: Settings, name: str) -> ChildProcess:
        environment = program_environment(settings.home, settings.database_url,
                                          settings.optuna_url,
                                          lease_seconds=settings.lease_seconds,
                                          heartbeat_seconds=settings.heartbeat_seconds)
        started_processes.append(start_worker(environment, settings.home / f"{name}.log"))
        return started_processes[-1]

    return start_one


def finished_trials(settings, job) -> list:
    study = optuna.load_study(study_name=job.study_name, storage=open_storage(settings.optuna_url))
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_two_workers_one_killed_mid_search_job_still_succeeds(tmp_path, postgres_pair,
                                                              start) -> None:
    ours, optuna_url = postgres_pair
    settings = make_settings(tmp_path / "home", ours, optuna_url, lease_seconds=6,
                             heartbeat_seconds=FAULT_HEARTBEAT_SECONDS)
    engine = create_engine_for(ours)
    tenant = get_or_create_tenant(engine, "acme")
    n_trials = 8
    job_id = submit(engine, settings, tenant.id, search={"n_trials": n_trials})
    first = start(settings, "first")
    wait_for(lambda: get_job(engine, job_id).status == JobStatus.SEARCHING.value, 180,
             "the first worker to finish preparing", interval=0.3)
    second = start(settings, "second")
    wait_for(lambda: len((get_job(engine, job_id).progress or {}) and
                         finished_trials(settings, get_job(engine, job_id))) >= 2, 180,
             "two finished trials", interval=0.3)
    first.kill()
    wait_for(lambda: JobStatus(get_job(engine, job_id).status).is_terminal(), 400,
             "the job to end", interval=0.3)
    assert second.stop(60) == 0, second.log_tail(60)

    job = get_job(engine, job_id)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message,
                                                     second.log_tail(60))
    assert len(finished_trials(settings, job)) == n_trials
    with session_scope(engine) as session:
        kinds = sorted(a.kind for a in session.scalars(
            select(Artifact).where(Artifact.job_id == job_id)))
    assert kinds == sorted(CHECKPOINT_FORMATS)  # one checkpoint, once
    # The workers' logs hold their own lines, not the ONNX exporter's INFO line per pass
    # (the second exported) nor Optuna's per study and trial (the first created the study).
    for name in ("first", "second"):
        log = (settings.home / f"{name}.log").read_text()
        assert f"took job {job_id}" in log, log
        for noise in ("onnx_ir", "onnxscript", "A new study created", "Trial 0 finished"):
            assert noise not in log, log
    engine.dispose()


def test_sigterm_releases_the_job_and_exits_zero(tmp_path, postgres_pair, start) -> None:
    ours, optuna_url = postgres_pair
    settings = make_settings(tmp_path / "home", ours, optuna_url, lease_seconds=30)
    engine = create_engine_for(ours)
    tenant = get_or_create_tenant(engine, "acme")
    job_id = submit(engine, settings, tenant.id, search={"n_trials": 200},
                    fine_tune={"trial_epochs": 3})
    worker = start(settings, "worker")
    wait_for(lambda: (get_job(engine, job_id).progress or {}).get("trials_complete", 0) >= 1,
             180, "a finished trial", interval=0.3)
    assert worker.stop(60) == 0, worker.log_tail(60)
    job = get_job(engine, job_id)
    # Still searching (nobody holds it; any worker can join), not failed.
    assert job.status == JobStatus.SEARCHING.value
    from service.jobs import active_participants

    assert active_participants(engine, job_id) == []
    engine.dispose()
