"""A RUNNING trial that never had a heartbeat (its worker died, or the database dropped,
between Optuna creating it and the first heartbeat) is failed and retried once.

Optuna's ``fail_stale_trials`` leaves such a trial RUNNING for ever (by design, optuna
PR #4055); ``search.budget.fail_stale_trials`` must not. Real RDBStorage, both backends.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import text

from search.budget import fail_stale_trials
from search.stale import fail_ownerless_trials, ownerless_trial_ids
from search.storage import HEARTBEAT_SECONDS, open_storage
from tests.support.fixtures import BACKENDS

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    # study.ask() on a storage with heartbeats is how a dead worker's trial is made here.
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used"),
]

GRACE = 2 * HEARTBEAT_SECONDS
SPACE = {"x": FloatDistribution(0.0, 1.0)}


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty Optuna database of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def storage(storage_url: str) -> Iterator[RDBStorage]:
    storage = open_storage(storage_url)
    yield storage
    storage.engine.dispose()


def _study(storage: RDBStorage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name="ownerless", load_if_exists=True)


def _started_ago(storage: RDBStorage, trial: optuna.Trial, seconds: float) -> None:
    """Backdate a trial's start, as if it had been created ``seconds`` ago."""
    with storage.engine.begin() as connection:
        connection.execute(text("UPDATE trials SET datetime_start = :start "
                                "WHERE trial_id = :trial_id"),
                           {"start": datetime.now() - timedelta(seconds=seconds),
                            "trial_id": trial._trial_id})


def _retries(study: optuna.Study) -> list[int | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return [RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
                for t in study.get_trials(states=(TrialState.WAITING,))]


def test_a_trial_without_heartbeat_past_the_grace_period_is_failed_and_retried_once(
        storage: RDBStorage) -> None:
    study = _study(storage)
    # study.ask() creates a RUNNING trial and starts no heartbeat: what a worker killed
    # right after creating its trial leaves behind.
    orphan = study.ask(SPACE)
    _started_ago(storage, orphan, GRACE + 5)

    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING  # Optuna leaves it

    fail_stale_trials(study)
    [failed, retry] = study.get_trials()
    assert failed.number == orphan.number and failed.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert _retries(study) == [orphan.number]

    # Another process seeing it afterwards finds nothing to do: re-queued once.
    other = open_storage(storage.url)
    try:
        assert fail_ownerless_trials(_study(other)) == []
    finally:
        other.engine.dispose()
    assert _retries(study) == [orphan.number]


def test_young_or_beating_trials_are_left_alone(storage: RDBStorage) -> None:
    study = _study(storage)
    young = study.ask(SPACE)  # no heartbeat yet, but within the grace period
    beating = study.ask(SPACE)
    _started_ago(storage, beating, GRACE + 5)
    storage.record_heartbeat(beating._trial_id)  # fresh heartbeat: its owner is alive

    assert fail_stale_trials(study) == []
    assert {t.number: t.state for t in study.get_trials()} == {
        young.number: TrialState.RUNNING, beating.number: TrialState.RUNNING}
    study_id = storage.get_study_id_from_name("ownerless")
    later = datetime.now() + timedelta(seconds=GRACE + 1)
    assert ownerless_trial_ids(storage, study_id, now=later) == [young._trial_id]


def test_processes_racing_for_the_same_trial_fail_and_retry_it_once(
        storage: RDBStorage, storage_url: str) -> None:
    if storage_url.startswith("sqlite"):
        pytest.skip("parallel workers need PostgreSQL (one worker on SQLite)")
    study = _study(storage)
    orphan = study.ask(SPACE)
    _started_ago(storage, orphan, GRACE + 5)
    storages = [open_storage(storage.url) for _ in range(4)]
    start = threading.Barrier(len(storages))
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def race(mine: RDBStorage) -> None:
        try:
            view = _study(mine)
            start.wait()
            results.append(fail_ownerless_trials(view))
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=race, args=(mine,)) for mine in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for mine in storages:
        mine.engine.dispose()
    assert errors == []
    assert sorted(results) == [[], [], [], [orphan.number]]
    assert _retries(study) == [orphan.number]
