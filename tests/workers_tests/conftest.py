"""Fixtures for workers: a migrated database, settings, a tenant and job submission."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from core.spec import JobSpec
from service.config import Settings
from service.db import create_engine_for, session_scope
from service.jobs import submit_job
from tests.support import copy_sqlite, tiny_spec


def make_settings(home: Path, database_url: str, optuna_url: str, **extra: Any) -> Settings:
    settings = Settings(home=home, database_url=database_url, optuna_url=optuna_url, **extra)
    settings.ensure_directories()
    return settings


def submit(engine: Engine, settings: Settings, tenant_id: int, **overrides: Any) -> str:
    spec = JobSpec.model_validate(tiny_spec(**overrides))
    with session_scope(engine) as session:
        return submit_job(session, tenant_id, spec, data_root=settings.data_root,
                          max_active_jobs=100).id


@pytest.fixture
def sqlite_settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    url = copy_sqlite(sqlite_template, tmp_path / "topiary.db")
    return make_settings(tmp_path / "home", url, f"sqlite:///{tmp_path / 'optuna.db'}",
                         lease_seconds=20)


@pytest.fixture
def sqlite_engine(sqlite_settings: Settings) -> Iterator[Engine]:
    engine = create_engine_for(sqlite_settings.database_url)
    yield engine
    engine.dispose()
