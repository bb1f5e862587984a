"""Fixtures for the job service: a migrated database on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from core.spec import JobSpec
from service.api.app import create_app
from service.config import Settings
from service.db import create_engine_for, migrate, session_scope
from service.jobs import submit_job
from service.tables import Job
from service.tenants import NewApiKey, TenantIdentity, create_api_key, get_or_create_tenant
from tests.conftest import create_postgres_database, drop_postgres_database

BACKENDS = [pytest.param("sqlite", id="sqlite"),
            pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


def spec_json(**overrides: Any) -> dict[str, Any]:
    """A small valid job spec as JSON; top-level keys can be replaced."""
    spec: dict[str, Any] = {
        "name": "resnet20-digits",
        "model": {"arch": "cifar_resnet20", "num_classes": 10, "weights": None},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"mode": "constrained", "constraints": {"max_latency_ratio": 0.5}},
        "search": {"n_trials": 4},
    }
    spec.update(overrides)
    return spec


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL of each backend (not migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'topiary.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def migrated_url(database_url: str) -> str:
    migrate(database_url)
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
def tenant(engine: Engine) -> TenantIdentity:
    return get_or_create_tenant(engine, "acme")


def make_jobs(engine: Engine, tenant_id: int, count: int, **overrides: Any) -> list[str]:
    """Submit ``count`` valid jobs; return their ids, oldest first."""
    ids = []
    for index in range(count):
        spec = JobSpec.model_validate(spec_json(name=f"job-{index}", **overrides))
        with session_scope(engine) as session:
            job: Job = submit_job(session, tenant_id, spec, data_root=Path("/nonexistent"),
                                  max_active_jobs=10_000)
            ids.append(job.id)
    return ids


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


@pytest.fixture
def optuna_url(request: pytest.FixtureRequest, migrated_url: str,
               tmp_path: Path) -> Iterator[str]:
    """Optuna's own database, of the same backend as ours (a second PostgreSQL database)."""
    if not migrated_url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    url = create_postgres_database(admin_url, prefix="topiary_optuna")
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, url)


@pytest.fixture
def api(settings: Settings, engine: Engine, optuna_url: str) -> Iterator[Api]:
    settings = settings.model_copy(update={"optuna_url": optuna_url})
    key = create_api_key(engine, "acme")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {key.key}"
        yield Api(client=client, engine=engine, settings=settings, key=key)
