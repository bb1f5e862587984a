"""The fault that leaves a trial nobody owns: a worker killed (or the database dropped)
after Optuna created its trial and before the trial's first heartbeat.

That window is a few milliseconds wide; to hit it on purpose, writes to Optuna's
``trial_heartbeats`` table are held back (``LOCK TABLE ... IN SHARE MODE``: reads go
on, inserts and updates wait) for a few seconds. A trial a worker creates meanwhile
is RUNNING with no heartbeat row; the fault strikes then, and the lock is released.
The victim's pending heartbeat insert dies with its connection, so the trial is left
exactly as a real crash in that window leaves it. Other trials' heartbeats are only
delayed (well under the grace period), never lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from cli.processes import ChildProcess
from service.jobs import JobStatus
from tests.support.cluster import Cluster

#: How long heartbeat writes may be held back: well under the grace period (20 s by
#: default), or the held trials' own heartbeats would be judged stale.
HOLD_SECONDS = 5.0

# A trial of the study, RUNNING, with no heartbeat row, whose objective already
# recorded which worker runs it.
_UNOWNED = text(
    "SELECT trials.number, trial_user_attributes.value_json FROM trials "
    "JOIN studies ON studies.study_id = trials.study_id "
    "JOIN trial_user_attributes ON trial_user_attributes.trial_id = trials.trial_id "
    "AND trial_user_attributes.key = 'worker' "
    "LEFT JOIN trial_heartbeats ON trial_heartbeats.trial_id = trials.trial_id "
    "WHERE studies.study_name = :study AND trials.state = 'RUNNING' "
    "AND trial_heartbeats.trial_id IS NULL ORDER BY trials.number")


@dataclass(frozen=True)
class UnownedTrial:
    """A trial caught before its first heartbeat, and the worker process running it."""

    number: int
    worker_id: str
    process: ChildProcess


@contextmanager
def heartbeats_held(optuna_url: str) -> Iterator[Connection]:
    """Hold back every write to ``trial_heartbeats`` until the block ends."""
    engine = create_engine(optuna_url, poolclass=NullPool)
    connection = engine.connect()
    try:
        connection.execute(text("SET lock_timeout = '5s'"))
        connection.execute(text("LOCK TABLE trial_heartbeats IN SHARE MODE"))
        yield connection
    finally:
        try:
            connection.rollback()
            connection.close()
        except Exception:  # noqa: BLE001 - the fault may have cut this connection too
            connection.invalidate()
        engine.dispose()


def _unowned(cluster: Cluster, connection: Connection, study: str) -> UnownedTrial | None:
    for number, value_json in connection.execute(_UNOWNED, {"study": study}).all():
        worker_id = str(value_json).strip('"')
        process = cluster.process_of(worker_id)
        if process is not None:
            return UnownedTrial(number, worker_id, process)
    return None


def strike_before_first_heartbeat(cluster: Cluster, job_id: str,
                                  fault: Callable[[UnownedTrial], None],
                                  hold_seconds: float = HOLD_SECONDS,
                                  poll_seconds: float = 0.05) -> UnownedTrial | None:
    """Hold heartbeats back; when a trial of ``job_id`` starts, run ``fault`` on it.

    Args:
        cluster: the processes and databases.
        job_id: a searching job.
        fault: what to do to the trial's worker while its trial has no heartbeat row
            (``lambda trial: trial.process.kill()``, or restart the database).
        hold_seconds: give up (and let the heartbeats through) after this long.

    Returns:
        The trial struck, or None when none of the job's trials started in time.
    """
    # A running trial's last heartbeat may be an interval old when the hold starts; held,
    # it must stay younger than the grace (twice the interval) or a live trial goes stale.
    interval = cluster.settings.heartbeat_seconds
    assert interval + hold_seconds + 2 <= 2 * interval, (
        f"holding heartbeats {hold_seconds} s needs TOPIARY_HEARTBEAT_SECONDS of at least "
        f"{hold_seconds + 2:.0f}, not {interval}")
    job = cluster.job(job_id)
    if job.status != JobStatus.SEARCHING.value or job.study_name is None:
        return None
    with heartbeats_held(cluster.settings.optuna_url) as connection:
        deadline = time.monotonic() + hold_seconds
        while time.monotonic() < deadline:
            trial = _unowned(cluster, connection, job.study_name)
            if trial is not None:
                fault(trial)
                return trial
            time.sleep(poll_seconds)
    return None


def kill_before_first_heartbeat(cluster: Cluster, job_id: str, timeout: float,
                                pause_seconds: float = 2.0) -> UnownedTrial:
    """SIGKILL the worker of a trial of ``job_id`` before that trial's first heartbeat.

    Tries again (heartbeats let through for ``pause_seconds`` in between) until a trial
    starts while heartbeats are held.

    Raises:
        AssertionError: no trial of the job started within ``timeout`` seconds, or the
            job ended first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = cluster.job(job_id)
        if JobStatus(job.status).is_terminal():
            raise AssertionError(f"job {job_id} ended ({job.status}) before a trial could "
                                 "be struck before its first heartbeat")
        trial = strike_before_first_heartbeat(cluster, job_id,
                                              lambda struck: struck.process.kill())
        if trial is not None:
            return trial
        time.sleep(pause_seconds if job.status == JobStatus.SEARCHING.value else 0.5)
    raise AssertionError(f"no trial of job {job_id} started within {timeout:.0f} s")
