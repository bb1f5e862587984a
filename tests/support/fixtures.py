"""The harness's fixtures, registered for every test by ``tests/conftest.py``.

PostgreSQL (skipped when it does not answer, except on CI), throwaway databases of
each backend (migrated ones are copies of a template migrated once per session and
xdist worker), and a real app on them (:class:`Api`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cli.processes import ChildProcess
from service.api.app import create_app
from service.config import Settings
from service.db import create_engine_for
from service.jobs import JobStatus, record_artifact, transition
from service.tenants import NewApiKey, create_api_key
from tests.support._postgres import (
    admin_url,
    create_database,
    drop_database,
    postgres_unavailable,
)
from tests.support._templates import (
    copy_postgres,
    copy_sqlite,
    migrated_postgres_template,
    migrated_sqlite_template,
)
from tests.support.specs import spec_json

BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The admin URL of a PostgreSQL server; skips (outside CI only) when none answers."""
    url = admin_url()
    reason = postgres_unavailable(url)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL at {url}: {reason}")
        pytest.skip(f"no PostgreSQL at {url} ({reason}); set TOPIARY_TEST_POSTGRES_URL "
                    "or start it with pg_ctlcluster")
    return url


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: str) -> Iterator[str]:
    """A migrated PostgreSQL database to copy (never connect to it)."""
    with migrated_postgres_template(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file to copy (never connect to it)."""
    return migrated_sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    url = create_database(postgres_admin_url)
    try:
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture
def migrated_postgres_url(postgres_admin_url: str, postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database with our tables, for one test, dropped afterwards."""
    url = copy_postgres(postgres_admin_url, postgres_template)
    try:
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture
def started_processes() -> Iterator[list[ChildProcess]]:
    """Append the processes a test starts: any still running at its end is killed, so a
    failing test leaves no worker behind."""
    started: list[ChildProcess] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each backend for one test: empty, or already migrated when the test
    uses ``migrated_url`` (itself, or through ``engine``, ``settings`` or ``api``)."""
    migrated = "migrated_url" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "topiary.db"
        if migrated:
            return copy_sqlite(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return str(request.getfixturevalue("migrated_postgres_url" if migrated else "postgres_url"))


@pytest.fixture
def migrated_url(database_url: str) -> str:
    """``database_url`` with our tables (a copy of the migrated template, see there)."""
    return database_url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = create_engine_for(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, migrated_url: str) -> Settings:
    """Settings whose home is a temporary folder and whose database is ``migrated_url``."""
    settings = Settings(home=tmp_path / "home", database_url=migrated_url,
                        optuna_url=f"sqlite:///{tmp_path / 'optuna.db'}",
                        max_upload_mb=1, max_concurrent_jobs_per_tenant=5, lease_seconds=30)
    settings.ensure_directories()
    return settings


@pytest.fixture
def optuna_url(request: pytest.FixtureRequest, migrated_url: str,
               tmp_path: Path) -> str:
    """Optuna's own database, of the same backend as ours (a second, empty PostgreSQL
    database)."""
    if not migrated_url.startswith("postgresql"):
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return str(request.getfixturevalue("postgres_url"))


@dataclass
class Api:
    """A test client of a real app on a real database, authenticated as tenant ``acme``."""

    client: TestClient
    engine: Engine
    settings: Settings
    key: NewApiKey

    @property
    def tenant_id(self) -> int:
        return self.key.tenant.id

    def other_tenant_headers(self, name: str = "globex") -> dict[str, str]:
        return {"Authorization": f"Bearer {create_api_key(self.engine, name).key}"}

    def succeeded_job(self, name: str, checkpoint: bytes) -> str:
        """Submit a job, move it to SUCCEEDED, and record ``checkpoint`` as its
        safetensors file (no worker runs); returns its id."""
        job_id = str(self.client.post("/v1/jobs", json=spec_json(name=name)).json()["id"])
        for status in (JobStatus.PREPARING, JobStatus.SEARCHING, JobStatus.FINALIZING,
                       JobStatus.SUCCEEDED):
            transition(self.engine, job_id, status)
        assert self.settings.artifact_dir is not None
        path = self.settings.artifact_dir / job_id / "pruned.safetensors"
        path.parent.mkdir(parents=True)
        path.write_bytes(checkpoint)
        record_artifact(self.engine, job_id, "safetensors", str(path), len(checkpoint),
                        hashlib.sha256(checkpoint).hexdigest())
        return job_id


@pytest.fixture
def api(settings: Settings, engine: Engine, optuna_url: str) -> Iterator[Api]:
    settings = settings.model_copy(update={"optuna_url": optuna_url})
    key = create_api_key(engine, "acme")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {key.key}"
        yield Api(client=client, engine=engine, settings=settings, key=key)
