from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine

from core.spec import JobSpec
from service.db import session_scope
from service.errors import TooManyJobsError
from service.jobs import list_jobs, requested_device_type, submit_job
from service.tenants import TenantIdentity
from tests.service_tests.conftest import spec_json

CAP = 5
SUBMITTERS = 8


def test_the_cap_holds_under_concurrent_submissions(engine: Engine,
                                                    tenant: TenantIdentity) -> None:
    spec = JobSpec.model_validate(spec_json())
    barrier = threading.Barrier(SUBMITTERS)
    outcomes: list[str] = []

    def submit() -> None:
        barrier.wait()
        try:
            with session_scope(engine) as session:
                submit_job(session, tenant.id, spec, data_root=Path("/none"),
                           max_active_jobs=CAP)
            outcomes.append("queued")
        except TooManyJobsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["queued"] * CAP + ["refused"] * (SUBMITTERS - CAP)
    with session_scope(engine) as session:
        assert list_jobs(session, tenant.id)[1] == CAP


def test_requested_device_type() -> None:
    devices = {"auto": None, "cpu": "cpu", "cuda": "cuda", "cuda:1": "cuda"}
    for device, expected in devices.items():
        spec = JobSpec.model_validate(spec_json(latency={"device": device}))
        assert requested_device_type(spec) == expected
