"""Optuna's storage: its own database, heartbeats, retries of stale trials.

Optuna's tables live apart from ours (DESIGN.md "Databases"). Several
processes may call ``optimize`` on one study; a process that dies leaves a
RUNNING trial whose heartbeat stops, Optuna fails it after the grace period
and ``RetryHeartbeatStaleTrialCallback`` re-queues the same parameters. One
that dies before its trial's first heartbeat leaves a trial Optuna never fails;
``search.stale`` fails it and hands it to the same callback.
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.exc import IntegrityError, ProgrammingError

#: Seconds between heartbeats of a running trial; stale after twice that.
HEARTBEAT_SECONDS = 10
MAX_RETRY = 3
#: Attempts at opening a storage whose tables another process is creating right now.
SCHEMA_ATTEMPTS = 5


def open_storage(url: str, heartbeat_seconds: int = HEARTBEAT_SECONDS,
                 max_retry: int = MAX_RETRY) -> RDBStorage:
    """An RDBStorage with heartbeat, stale-trial retry and a pre-pinged pool.

    Args:
        url: SQLAlchemy URL of Optuna's own database.
        heartbeat_seconds: heartbeat interval; the grace period is twice that.
        max_retry: how many times a trial whose worker died is run again.
    """
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are "experimental" in Optuna 5.0; we rely on them.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                return _rdb_storage(url, engine_kwargs, heartbeat_seconds, max_retry)
            except (IntegrityError, ProgrammingError) as error:
                # Optuna creates its tables (and PostgreSQL enum types) when they are
                # missing, without a lock: two processes opening a fresh database at once
                # collide with "already exists". The loser finds them made next time.
                if attempt == SCHEMA_ATTEMPTS or "already exists" not in str(error):
                    raise
                time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _rdb_storage(url: str, engine_kwargs: dict, heartbeat_seconds: int,
                 max_retry: int) -> RDBStorage:
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_seconds,
        grace_period=2 * heartbeat_seconds,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )


def silence_optuna_logs() -> None:
    """Optuna logs every trial at INFO; our own events carry that."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
