"""A worker whose data root lacks a job's folder does not fail a job another worker
prepared: it gives the job back and never claims it again (``Worker._decline``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Settings
from service.jobs import (
    JobStatus,
    active_participants,
    claim_next_job,
    get_job,
    list_events,
    set_baseline,
)
from service.tenants import get_or_create_tenant
from tests.models_tests.conftest import write_mnist_like
from tests.workers_tests.conftest import claim_run, submit
from workers.prepare import prepare
from workers.worker import Worker

pytestmark = pytest.mark.slow


def _two_data_roots(settings: Settings, tmp_path: Path, train: int,
                    test: int) -> tuple[Settings, Settings]:
    """Settings whose data root holds ``bars/`` (an MNIST-like dataset), and settings
    whose data root is an empty folder."""
    write_mnist_like(tmp_path / "data" / "bars", train=train, test=test)
    (tmp_path / "elsewhere").mkdir()
    return (settings.model_copy(update={"data_root": tmp_path / "data"}),
            settings.model_copy(update={"data_root": tmp_path / "elsewhere"}))


def test_a_worker_that_cannot_read_a_prepared_jobs_data_leaves_it_to_the_others(
        sqlite_settings, sqlite_engine, tmp_path: Path) -> None:
    reads, lacks = _two_data_roots(sqlite_settings, tmp_path, train=200, test=50)
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, reads, tenant.id, search={"n_trials": 2},
                    dataset={"name": "mnist", "root": "bars", "image_size": 16})

    # A worker that reads the data prepares the job (baseline, scores, warm start) ...
    first = Worker(reads, device="cpu", threads=1)
    prepare(first.runtime, claim_run(sqlite_engine, first))
    assert get_job(sqlite_engine, job_id).status == JobStatus.SEARCHING.value

    # ... then one whose data root lacks the folder joins the search and leaves it.
    stranger = Worker(lacks, device="cpu", threads=1)
    stranger.run_forever(exit_when_idle=True)
    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.SEARCHING.value, (job.error_code, job.error_message)
    assert stranger.declined == {job_id}
    assert stranger.worker_id not in active_participants(sqlite_engine, job_id)
    [said] = [event for event in list_events(sqlite_engine, job_id)
              if (event.data or {}).get("declined")]
    assert said.kind == "worker" and stranger.worker_id in said.message
    assert "bars" in said.message and "TOPIARY_DATA_ROOT" in said.message
    device = stranger.runtime.device
    assert claim_next_job(sqlite_engine, stranger.worker_id, device.type,
                          runtimes=device.runtimes, device_model=device.description,
                          declined=stranger.declined) is None

    # A worker that reads the data finishes the search.
    Worker(reads, device="cpu", threads=1).run_forever(exit_when_idle=True)
    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message)


@pytest.mark.parametrize("measured_before", [False, True], ids=["fresh", "requeued"])
def test_under_an_exclusive_hold_a_job_whose_data_is_unreadable_fails_with_the_reason(
        sqlite_settings, sqlite_engine, tmp_path: Path, measured_before: bool) -> None:
    """A fresh job, or one requeued after a worker measured its baseline (the data may be
    gone for every worker now): failed, naming the folder, the worker and its data root,
    rather than given back by every worker in turn and left waiting."""
    reads, lacks = _two_data_roots(sqlite_settings, tmp_path, train=40, test=10)
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, reads, tenant.id,
                    dataset={"name": "mnist", "root": "bars", "image_size": 16})
    if measured_before:
        set_baseline(sqlite_engine, job_id, {"accuracy": 0.9}, device_type="cpu")
    stranger = Worker(lacks, device="cpu", threads=1)
    stranger.run_forever(exit_when_idle=True)
    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.FAILED.value and job.error_code == "dataset_error"
    assert "bars" in job.error_message and not stranger.declined
    assert stranger.worker_id in job.error_message
    assert f"TOPIARY_DATA_ROOT is {str(tmp_path / 'elsewhere')!r}" in job.error_message
