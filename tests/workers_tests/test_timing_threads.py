"""The threads a job's timings use when its spec sets none (SQLite, in this process)."""

from __future__ import annotations

import torch
from sqlalchemy import Engine

from service.config import Settings
from service.tenants import get_or_create_tenant
from tests.workers_tests.conftest import claim_run, submit
from workers.device import open_device
from workers.worker import Worker


def test_a_cpu_worker_times_on_all_its_threads_but_one_unless_the_spec_says(
        sqlite_settings: Settings, sqlite_engine: Engine) -> None:
    before = torch.get_num_threads()
    try:
        assert open_device("cpu", threads=3).timing_threads == 2
        assert open_device("cpu", threads=1).timing_threads == 1
        tenant = get_or_create_tenant(sqlite_engine, "acme")
        chosen = submit(sqlite_engine, sqlite_settings, tenant.id,
                        latency={"device": "cpu", "threads": 3})
        unset = submit(sqlite_engine, sqlite_settings, tenant.id)
        worker = Worker(sqlite_settings, device="cpu", threads=2)
        runs = [claim_run(sqlite_engine, worker) for _ in range(2)]
        assert {run.job.id: run.spec.latency.threads for run in runs} == {chosen: 3, unset: 1}
    finally:
        torch.set_num_threads(before)
