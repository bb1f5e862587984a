"""Fixtures for workers: a migrated database, settings, a tenant and job submission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from core.spec import JobSpec
from service.config import Settings
from service.db import create_engine_for, migrate, session_scope
from service.jobs import submit_job


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A job that runs in seconds: ResNet-20 on 16x16 digits, a handful of trials."""
    spec: dict[str, Any] = {
        "name": "worker-test",
        "model": {"arch": "cifar_resnet20"},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"constraints": {"max_flops_ratio": 0.5}},
        "latency": {"device": "cpu", "runs": 5, "warmup": 1},
        "search": {"n_trials": 4, "warm_start": ["pls"], "round_to": 4},
        "fine_tune": {"trial_epochs": 1, "final_epochs": 1, "baseline_epochs": 2},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


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
def sqlite_settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'topiary.db'}"
    migrate(url)
    return make_settings(tmp_path / "home", url, f"sqlite:///{tmp_path / 'optuna.db'}",
                         lease_seconds=20)


@pytest.fixture
def sqlite_engine(sqlite_settings: Settings) -> Engine:
    engine = create_engine_for(sqlite_settings.database_url)
    yield engine
    engine.dispose()
