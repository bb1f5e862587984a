"""Stalls the workers report reach Prometheus as one counter, read from the database."""

from __future__ import annotations

from service.jobs import (
    JobStatus,
    claim_next_job,
    register_worker,
    report_stall,
    set_baseline,
    transition,
)
from tests.service_tests.conftest import Api, make_jobs


def _stall_count(text: str) -> float:
    [line] = [line for line in text.splitlines()
              if line.startswith("topiary_search_stalls_total ")]
    return float(line.split()[1])


def test_each_reported_stall_counts_once(api: Api) -> None:
    assert _stall_count(api.client.get("/metrics").text) == 0
    assert "# TYPE topiary_search_stalls_total counter" in api.client.get("/metrics").text
    [job_id] = make_jobs(api.engine, api.tenant_id, 1)
    worker = register_worker(api.engine, "a", "cpu", "cpu")
    claim_next_job(api.engine, worker, "cpu")
    set_baseline(api.engine, job_id, {"accuracy": 0.9}, device_type="cpu")
    transition(api.engine, job_id, JobStatus.SEARCHING, worker_id=worker)

    assert report_stall(api.engine, job_id, 2, "stalled at 2 finished trials")
    assert not report_stall(api.engine, job_id, 2, "the same stall, seen by another worker")
    assert report_stall(api.engine, job_id, 3, "stalled again later")
    assert _stall_count(api.client.get("/metrics").text) == 2
