"""GET requests read without a transaction, and the live workers a waiting job is told
about are read at most once a second per API process (every backend)."""

from __future__ import annotations

import time

from sqlalchemy import Engine, select

from service.db import create_engine_for, is_postgresql, read_only_engine, session_scope
from service.jobs import LiveWorkers, get_job, register_worker, stop_worker, waiting_for
from service.tables import Tenant
from service.tenants import TenantIdentity, get_or_create_tenant
from tests.service_tests.conftest import Api, make_jobs
from tests.support.specs import spec_json


def test_reads_skip_the_transaction_and_writes_on_the_same_connection_keep_theirs(
        migrated_url: str) -> None:
    engine = create_engine_for(migrated_url, **({"pool_size": 1, "max_overflow": 0}
                                                if "postgresql" in migrated_url else {}))
    try:
        reader = read_only_engine(engine)
        if not is_postgresql(engine):
            assert reader is engine  # SQLite begins no transaction for a read anyway
            return
        with session_scope(reader) as session:
            connection = session.connection()
            assert connection.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
            reused = connection.connection.dbapi_connection
        # The pool's one connection, back in transactions: a failed write leaves nothing.
        try:
            with session_scope(engine) as session:
                connection = session.connection()
                assert connection.connection.dbapi_connection is reused  # type: ignore[union-attr]
                assert connection.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
                get_or_create_tenant(session, "rolled-back")
                session.flush()
                raise RuntimeError("after the insert")
        except RuntimeError:
            pass
        with session_scope(engine) as session:
            assert session.scalars(select(Tenant).where(Tenant.name == "rolled-back")).all() == []
    finally:
        engine.dispose()


def test_live_workers_are_read_at_most_once_per_max_age(engine: Engine,
                                                        tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    job = get_job(engine, job_id)
    # An age long enough that a write and a read fit in it on a loaded machine (0.5 s
    # did not, once, in CI).
    age = 3.0
    live = LiveWorkers(within_seconds=60, max_age_seconds=age)
    now = LiveWorkers(within_seconds=60, max_age_seconds=0)
    assert waiting_for(engine, job, live) is not None  # nobody yet
    worker = register_worker(engine, "a", "cpu", "cpu")
    # Within the age: the answer read a moment ago; read now: the database's.
    assert waiting_for(engine, job, live) is not None
    assert waiting_for(engine, job, now) is None
    time.sleep(age + 0.1)
    assert waiting_for(engine, job, live) is None
    stop_worker(engine, worker)
    assert waiting_for(engine, job, live) is None
    assert waiting_for(engine, job, now) is not None


def test_get_job_answers_through_the_read_engine_and_says_what_it_waits_for(api: Api) -> None:
    created = api.client.post("/v1/jobs", json=spec_json(name="waiting"))
    assert created.status_code == 201, created.text
    for _ in range(3):  # the cached read answers the same
        body = api.client.get(f"/v1/jobs/{created.json()['id']}").json()
        assert body["waiting_for"] == "waiting for a worker; none is running"
    assert api.client.post(f"/v1/jobs/{created.json()['id']}/cancel").status_code == 200
