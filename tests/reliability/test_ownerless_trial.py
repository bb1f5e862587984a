"""A worker SIGKILLed after Optuna created its trial and before that trial's first heartbeat.

The trial is left RUNNING with no row in ``trial_heartbeats``, which Optuna never
fails by itself (issue 20: a chaos job waited on such a trial for 18 minutes). The
job must still finish with exactly ``n_trials`` finished trials: the trial is failed
once its start is older than the grace period and re-queued once.
"""

from __future__ import annotations

import warnings

import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from service.jobs import JobStatus
from tests.support.cluster import Cluster
from tests.support.first_heartbeat import kill_before_first_heartbeat
from tests.support.invariants import inspect_job

pytestmark = [pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def _heartbeat_rows(cluster: Cluster, study_name: str, number: int) -> int:
    engine = create_engine(cluster.settings.optuna_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(
                "SELECT count(*) FROM trial_heartbeats JOIN trials USING (trial_id) "
                "JOIN studies USING (study_id) WHERE study_name = :study AND number = :number"),
                {"study": study_name, "number": number}).scalar_one())
    finally:
        engine.dispose()


def test_a_trial_killed_before_its_first_heartbeat_is_run_again(cluster: Cluster) -> None:
    n_trials = 4
    job_id = cluster.submit(search={"n_trials": n_trials})
    cluster.start_worker()
    cluster.start_worker()

    struck = kill_before_first_heartbeat(cluster, job_id, timeout=500)
    study_name = cluster.job(job_id).study_name
    assert study_name is not None
    # What the killed worker left: RUNNING, and not a single heartbeat.
    [orphan] = [t for t in cluster.study_trials(job_id) if t.number == struck.number]
    assert orphan.state == TrialState.RUNNING
    assert _heartbeat_rows(cluster, study_name, struck.number) == 0
    cluster.start_worker()  # a standby, as a supervisor would restart the dead one

    cluster.wait_until_terminal(job_id, timeout=600)
    outcome = inspect_job(cluster, job_id)
    assert outcome.status == JobStatus.SUCCEEDED.value, (outcome, cluster.logs())
    assert outcome.problems == [], (outcome, cluster.logs())
    assert outcome.finished_trials == n_trials and outcome.duplicated_trials == 0
    trials = {t.number: t for t in cluster.study_trials(job_id)}
    assert trials[struck.number].state == TrialState.FAIL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retries = [t for t in trials.values()
                   if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == struck.number]
    assert len(retries) == 1, "the ownerless trial must be re-queued exactly once"
