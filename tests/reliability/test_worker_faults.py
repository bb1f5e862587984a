"""Workers SIGKILLed at chosen points of a job, with another worker standing by.

The job must still succeed with exactly ``n_trials`` finished trials, none counted
twice, and one checkpoint per format whose bytes match their recorded digest.
``bench/chaos.py`` repeats this at random points over many jobs.
"""

from __future__ import annotations

import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from service.jobs import JobStatus
from tests.support.cluster import Cluster, kill_at
from tests.support.invariants import inspect_job, leftover_temporaries

pytestmark = [pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def test_kills_while_preparing_mid_trial_and_while_exporting(cluster: Cluster) -> None:
    n_trials = 5
    job_id = cluster.submit(search={"n_trials": n_trials})
    cluster.start_worker()
    cluster.start_worker()

    # 1. Preparing (exclusive lease): the standby worker takes over once the lease lapses.
    kill_at(cluster, job_id, "preparing", timeout=300)
    cluster.start_worker()  # a fresh standby for the next fault

    # 2. Mid-trial: the victim's running trial goes stale, is failed and re-queued.
    victim = kill_at(cluster, job_id, "mid_trial", timeout=400)
    victim_id = cluster.worker_id_of(victim)
    killed_trials = {t.number for t in cluster.study_trials(job_id)
                     if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == victim_id}
    assert killed_trials
    cluster.start_worker()

    # 3. Exporting (exclusive again): the checkpoint files are half written.
    kill_at(cluster, job_id, "export", timeout=400)
    job = cluster.wait_until_terminal(job_id, timeout=400)

    outcome = inspect_job(cluster, job_id)
    assert outcome.status == JobStatus.SUCCEEDED.value, (outcome, cluster.logs())
    assert outcome.problems == [], (outcome, cluster.logs())
    assert outcome.finished_trials == n_trials and outcome.duplicated_trials == 0
    assert job.attempts >= 2  # two exclusive leases were lost, and counted
    trials = cluster.study_trials(job_id)
    retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    orphaned = (killed_trials & failed) - retried
    assert not orphaned, f"trials {orphaned} were killed and never run again"
    # What the killed exporter left is only ever under a temporary name.
    for leftover in leftover_temporaries(cluster, job_id):
        assert leftover.name.endswith(".partial") and leftover.name.startswith(".")
