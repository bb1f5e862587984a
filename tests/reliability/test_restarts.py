"""The API and PostgreSQL restarted under a running job: nothing is lost, the job completes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.jobs import JobStatus, set_study_name
from tests.support import (
    PrivatePostgres,
    chaos_spec,
    private_postgres,
    private_postgres_unavailable,
    spec_json,
    wait_for,
)
from tests.support.cluster import Cluster
from tests.support.fixtures import Api
from tests.support.invariants import download_problems, inspect_job

OUTAGE_SECONDS = 12


def _events(client, job_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/jobs/{job_id}/events", params={"follow": "false"})
    assert response.status_code == 200, response.text
    return response.json()


def _finished(cluster: Cluster, job_id: str) -> int:
    progress = cluster.job(job_id).progress or {}
    return int(progress.get("trials_complete", 0)) + int(progress.get("trials_pruned", 0))


@pytest.fixture
def private_server() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, to stop (the shared one serves other tests)."""
    reason = private_postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with private_postgres() as server:
        yield server


@pytest.fixture
def private_cluster(private_server: PrivatePostgres, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose databases are on ``private_server``."""
    with Cluster.create(private_server.admin_url, tmp_path / "home",
                        logs=tmp_path / "logs") as cluster:
        yield cluster


@pytest.mark.postgres
@pytest.mark.slow
def test_api_and_postgresql_restarts_mid_search_lose_nothing(
        private_cluster: Cluster, private_server: PrivatePostgres) -> None:
    cluster = private_cluster
    api = cluster.start_api()
    worker = cluster.start_worker()
    with api.client() as client:
        created = client.post("/v1/jobs", json=chaos_spec(search={"n_trials": 5}))
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
    wait_for(lambda: _finished(cluster, job_id) >= 1, 300, "a finished trial")

    # The API dies without warning and comes back on the same port.
    with api.client() as client:
        before = _events(client, job_id)
    api.process.kill()
    api = cluster.start_api(port=api.port)
    with api.client() as client:
        after = _events(client, job_id)
        assert after[:len(before)] == before  # the log is intact
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] in {"searching", "finalizing"}

    # PostgreSQL goes down for longer than a trial (so the worker's writes at the end of
    # a trial meet the outage, not only its heartbeat) and comes back: every connection
    # of the API and the worker is cut.
    trials_before = _finished(cluster, job_id)
    with private_server.stopped(), api.client() as client:
        down = client.get(f"/v1/jobs/{job_id}")
        assert down.status_code == 503 and down.json()["code"] == "database_error"
        assert down.headers["Retry-After"]
        assert client.get("/readyz").status_code == 503
        assert client.get(f"/v1/jobs/{job_id}/trials").status_code == 503
        time.sleep(OUTAGE_SECONDS)
    with api.client() as client:
        # Pre-ping replaces the dead pooled connections: no request sees the restart.
        assert client.get("/readyz").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
        assert client.get(f"/v1/jobs/{job_id}/trials").status_code == 200

    job = cluster.wait_until_terminal(job_id, 400)
    outcome = inspect_job(cluster, job_id)
    assert outcome.status == JobStatus.SUCCEEDED.value, (outcome, cluster.logs())
    assert outcome.problems == [], (outcome, cluster.logs())
    assert outcome.finished_trials == 5 and trials_before < 5
    assert worker.alive(), "the worker should have survived the restart: " + worker.log_tail(60)
    assert download_problems(api, job) == []
    with api.client() as client:
        assert _events(client, job_id)[:len(before)] == before


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_optuna_database_unreachable_is_503_naming_it(api: Api, optuna_url: str) -> None:
    """Ours answers, Optuna's drops every connection and refuses new ones (503, not 500)."""
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    study = optuna.create_study(storage=optuna_url, study_name=f"study-{job_id}")
    study.enqueue_trial({})
    set_study_name(api.engine, job_id, study.study_name)
    assert api.client.get(f"/v1/jobs/{job_id}/trials").json()["count"] == 1
    name = make_url(optuna_url).database
    admin = create_engine(make_url(optuna_url).set(database="postgres"),
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = :name"), {"name": name})
        response = api.client.get(f"/v1/jobs/{job_id}/trials")
        assert response.status_code == 503, response.text
        assert "Optuna database" in response.json()["detail"]
        assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert api.client.get(f"/v1/jobs/{job_id}/trials").json()["count"] == 1
