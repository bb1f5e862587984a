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
from service.jobs import claim_next_job, submit_job
from tests.support import copy_sqlite, tiny_spec
from workers.runtime import JobRun
from workers.worker import Worker


def make_settings(home: Path, database_url: str, optuna_url: str, **extra: Any) -> Settings:
    settings = Settings(home=home, database_url=database_url, optuna_url=optuna_url, **extra)
    settings.ensure_directories()
    return settings


def claim_run(engine: Engine, worker: Worker) -> JobRun:
    """The oldest job ``worker`` can take, claimed as its loop claims, and its run."""
    device = worker.runtime.device
    claim = claim_next_job(engine, worker.worker_id, device.type, runtimes=device.runtimes,
                           device_model=device.description)
    assert claim is not None, "no job to claim"
    return worker.runtime.start_run(claim)


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
