"""Trials nothing will ever end: RUNNING, no heartbeat row, started over a grace period ago.

Optuna fails a RUNNING trial only once its heartbeat row goes stale;
``RDBStorage._get_stale_trial_ids`` skips a trial that has no heartbeat row at
all, on purpose (optuna PR #4055). A worker killed, or a database that dropped,
between Optuna creating a trial and its heartbeat thread's first write leaves
exactly that: a trial nobody owns, holding a slot of the budget for good.

``fail_ownerless_trials`` ends them the way ``optuna.storages.fail_stale_trials``
ends stale ones: the state change goes through the storage's guarded
``set_trial_state_values`` (the row is fetched ``FOR UPDATE`` and must still be
unfinished), so of all the processes of a study that see the trial only one
fails it, and only that one runs the stale-trial callback
(``RetryHeartbeatStaleTrialCallback``): the trial is re-queued once and counted
once. Losing that race is not an error.
"""

from __future__ import annotations

import copy
import logging
from datetime import datetime

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy import DateTime, Integer, text

logger = logging.getLogger(__name__)

# Read-only: the state change itself goes through the storage's API.
_RUNNING_WITHOUT_HEARTBEAT = text(
    "SELECT trials.trial_id, trials.datetime_start FROM trials "
    "LEFT JOIN trial_heartbeats ON trial_heartbeats.trial_id = trials.trial_id "
    "WHERE trials.study_id = :study_id AND trials.state = 'RUNNING' "
    "AND trial_heartbeats.trial_id IS NULL",
).columns(trial_id=Integer, datetime_start=DateTime)  # typed, or SQLite hands back strings


def heartbeat_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage under ``storage`` when it has heartbeats turned on, else None.

    ``optuna.create_study`` wraps an RDBStorage in its private ``_CachedStorage``;
    the heartbeat table, settings and callback are the wrapped storage's.
    """
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, RDBStorage) and backend.heartbeat_interval is not None:
        return backend
    return None


def grace_seconds(backend: RDBStorage) -> float:
    """How long a trial may go without a heartbeat (Optuna's default: two intervals)."""
    assert backend.heartbeat_interval is not None
    return float(backend.grace_period or 2 * backend.heartbeat_interval)


def ownerless_trial_ids(storage: BaseStorage, study_id: int, *,
                        now: datetime | None = None) -> list[int]:
    """RUNNING trials of the study with no heartbeat row that started over a grace period ago.

    Args:
        storage: the study's storage (needs heartbeats, else nothing is ever ownerless).
        study_id: the study.
        now: the current time, in the clock that wrote ``datetime_start``.

    Returns:
        Trial ids (not numbers), oldest first.
    """
    backend = heartbeat_backend(storage)
    if backend is None:
        return []
    with backend.engine.connect() as connection:
        rows = connection.execute(_RUNNING_WITHOUT_HEARTBEAT, {"study_id": study_id}).all()
    # Optuna writes datetime_start with the creating process's datetime.now() (naive,
    # local), not the database's clock, so the age is judged in that same clock.
    now = now or datetime.now()
    grace = grace_seconds(backend)
    return [trial_id for trial_id, started in sorted(rows, key=lambda row: row[0])
            if started is not None and (now - started).total_seconds() > grace]


def fail_ownerless_trials(study: optuna.Study, *, now: datetime | None = None) -> list[int]:
    """Fail the study's ownerless trials and hand each to the stale-trial callback.

    Args:
        study: a study on an RDBStorage with heartbeats (any other storage: no-op).
        now: the current time, in the clock that wrote ``datetime_start`` (tests).

    Returns:
        The numbers of the trials this process failed (not those another process
        failed first).
    """
    # Optuna's own fail_stale_trials reads the study's storage the same way.
    storage = study._storage
    backend = heartbeat_backend(storage)
    if backend is None:
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial_id in ownerless_trial_ids(storage, study_id, now=now):
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first, or its owner finished it after all
    callback = backend.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        trial = copy.deepcopy(storage.get_trial(trial_id))
        numbers.append(trial.number)
        logger.warning("trial %d of study %s was RUNNING with no heartbeat for over %.0f s "
                       "(its process died before the first one): failed, to be re-queued",
                       trial.number, study.study_name, grace_seconds(backend))
        if callback is not None:
            callback(study, trial)
    return numbers
