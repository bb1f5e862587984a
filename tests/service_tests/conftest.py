"""Fixtures for the job service: a tenant and queued jobs on a migrated database.

The databases of each backend, the settings and the app (``database_url``,
``migrated_url``, ``engine``, ``settings``, ``optuna_url``, ``api``) are the harness's
(:mod:`tests.support.fixtures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from core.spec import JobSpec
from service.db import session_scope
from service.jobs import Job, submit_job
from service.tenants import TenantIdentity, get_or_create_tenant
from tests.support import spec_json

# Every test has these fixtures already; the names stay importable from here for the
# modules that import them.
from tests.support.fixtures import Api, database_url, engine, migrated_url

__all__ = ["Api", "database_url", "engine", "make_jobs", "migrated_url", "spec_json", "tenant"]


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
