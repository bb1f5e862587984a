"""A long training phase says how far it is in the job's phase (SQLite, in this process)."""

from __future__ import annotations

from sqlalchemy import Engine

from service.config import Settings
from service.jobs import get_job, list_events
from service.tenants import get_or_create_tenant
from tests.workers_tests.conftest import claim_run, submit
from workers.baseline import baseline_model
from workers.worker import Worker


def test_training_a_baseline_shows_its_last_epoch_in_the_phase(
        sqlite_settings: Settings, sqlite_engine: Engine) -> None:
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id)
    worker = Worker(sqlite_settings, device="cpu", threads=1)
    run = claim_run(sqlite_engine, worker)
    assert run.job.id == job_id
    baseline_model(worker.runtime, run, worker.runtime.load_data(run.spec))

    phase = get_job(sqlite_engine, job_id).phase
    assert phase.startswith("training a baseline for 2 epochs (no weights given): epoch 2/2 "
                            "done, val accuracy 0."), phase
    # The epochs are in the log once each, as before; the phase adds no events.
    events = list_events(sqlite_engine, job_id)
    assert [e.message.split(":")[0] for e in events if e.kind == "baseline"] == [
        "baseline epoch 1/2", "baseline epoch 2/2"]
    assert [e.message for e in events if e.kind == "phase"] == [
        "training a baseline for 2 epochs (no weights given)"]
