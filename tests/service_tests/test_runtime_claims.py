"""Latency runtimes and device models in the claim query, and limits in GET /v1/jobs/{id}
(every backend)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine

from service.jobs import (
    JobStatus,
    LiveWorkers,
    claim_next_job,
    get_job,
    register_worker,
    requeue_expired,
    set_baseline,
    stop_worker,
    succeed_job,
    transition,
    waiting_for,
)
from service.tenants import TenantIdentity
from tests.service_tests.conftest import Api, make_jobs

ORT = {"runtime": "onnxruntime"}
#: The live workers (heartbeat in the last minute) read from the database every time.
NOW = LiveWorkers(within_seconds=60, max_age_seconds=0)
XEON = "Intel(R) Xeon(R) Gold 6338 (2 threads)"
EPYC = "AMD EPYC 7763 (2 threads)"


def test_a_worker_without_the_runtime_never_claims_the_job(engine: Engine,
                                                           tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1, latency=ORT)
    assert get_job(engine, job_id).latency_runtime == "onnxruntime"
    eager = register_worker(engine, "a", "cpu", XEON, runtimes=["torch"])
    both = register_worker(engine, "b", "cpu", XEON, runtimes=["torch", "onnxruntime"])
    assert claim_next_job(engine, eager, "cpu", runtimes=["torch"], device_model=XEON) is None
    claim = claim_next_job(engine, both, "cpu", runtimes=["torch", "onnxruntime"],
                           device_model=XEON)
    assert claim is not None and claim.id == job_id
    set_baseline(engine, job_id, {"latency_ms": 1.0}, device_type="cpu")
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=both)
    # Nor does it join the search.
    assert claim_next_job(engine, eager, "cpu", runtimes=["torch"], device_model=XEON) is None
    other = register_worker(engine, "c", "cpu", EPYC, runtimes=["onnxruntime"])
    assert claim_next_job(engine, other, "cpu", runtimes=["onnxruntime"],
                          device_model=EPYC) is not None  # no device model recorded


def test_eager_jobs_are_claimed_by_default_and_exported_runtimes_are_not(
        engine: Engine, tenant: TenantIdentity) -> None:
    ort_job, eager_job = make_jobs(engine, tenant.id, 1, latency=ORT) + make_jobs(
        engine, tenant.id, 1)
    worker = register_worker(engine, "a", "cpu", "cpu")
    claim = claim_next_job(engine, worker, "cpu")  # a worker that names no runtime: torch
    assert claim is not None and claim.id == eager_job
    assert get_job(engine, ort_job).status == JobStatus.QUEUED.value


def test_openvino_and_tensorrt_fix_the_device_type(engine: Engine,
                                                   tenant: TenantIdentity) -> None:
    [openvino] = make_jobs(engine, tenant.id, 1, latency={"runtime": "openvino"})
    [tensorrt] = make_jobs(engine, tenant.id, 1, latency={"runtime": "tensorrt",
                                                          "precision": "int8"})
    assert (get_job(engine, openvino).device_request, get_job(engine, tensorrt).device_request
            ) == ("cpu", "cuda")
    gpu = register_worker(engine, "g", "cuda", "NVIDIA H200",
                          runtimes=["torch", "onnxruntime", "openvino"])
    assert claim_next_job(engine, gpu, "cuda", runtimes=["torch", "onnxruntime", "openvino"],
                          device_model="NVIDIA H200") is None
    cpu = register_worker(engine, "c", "cpu", XEON, runtimes=["torch", "openvino"])
    claim = claim_next_job(engine, cpu, "cpu", runtimes=["torch", "openvino"],
                           device_model=XEON)
    assert claim is not None and claim.id == openvino
    # No worker can time in TensorRT: the job waits, and says why.
    reason = waiting_for(engine, get_job(engine, tensorrt), NOW)
    assert reason is not None
    assert "tensorrt latency runtime" in reason
    assert "no Topiary worker can time in TensorRT yet" in reason


def test_trials_of_a_timed_job_run_on_the_device_model_of_its_baseline(
        engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    first = register_worker(engine, "a", "cpu", XEON)
    same = register_worker(engine, "b", "cpu", XEON)
    other = register_worker(engine, "c", "cpu", EPYC)
    claim_next_job(engine, first, "cpu", device_model=XEON)
    set_baseline(engine, job_id, {"latency_ms": 1.0}, device_type="cpu", device_model=XEON)
    transition(engine, job_id, JobStatus.SEARCHING, worker_id=first)
    assert get_job(engine, job_id).device_model == XEON
    assert claim_next_job(engine, other, "cpu", device_model=EPYC) is None
    assert claim_next_job(engine, other, "cpu") is None  # a worker that names no model
    joined = claim_next_job(engine, same, "cpu", device_model=XEON)
    assert joined is not None and joined.device_model == XEON


def test_a_requeued_job_with_a_timed_baseline_waits_for_its_device_model(
        engine: Engine, tenant: TenantIdentity) -> None:
    [job_id] = make_jobs(engine, tenant.id, 1)
    first = register_worker(engine, "a", "cpu", XEON)
    claim_next_job(engine, first, "cpu", device_model=XEON, lease_seconds=-1.0)
    set_baseline(engine, job_id, {"latency_ms": 1.0}, device_type="cpu", device_model=XEON)
    assert requeue_expired(engine) == [job_id]
    stop_worker(engine, first)
    other = register_worker(engine, "b", "cpu", EPYC)
    assert claim_next_job(engine, other, "cpu", device_model=EPYC) is None
    reason = waiting_for(engine, get_job(engine, job_id), NOW)
    assert reason is not None and XEON in reason and "1 live worker," in reason
    again = register_worker(engine, "c", "cpu", XEON)
    assert waiting_for(engine, get_job(engine, job_id), NOW) is None
    claim = claim_next_job(engine, again, "cpu", device_model=XEON)
    assert claim is not None and claim.id == job_id


def test_get_shows_every_limit_beside_the_delivered_value(api: Api) -> None:
    spec = {"name": "limited", "model": {"arch": "cifar_resnet20"},
            "dataset": {"name": "digits", "image_size": 16},
            "objective": {"constraints": {"max_latency_ratio": 0.5, "max_flops_ratio": 0.4,
                                          "max_params": 1000}},
            "latency": {"runtime": "onnxruntime"}}
    created = api.client.post("/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    body = api.client.get(f"/v1/jobs/{job_id}").json()
    assert body["latency_runtime"] == "onnxruntime" and body["device_model"] is None
    assert "onnxruntime latency runtime" in body["waiting_for"]
    assert [(limit["name"], limit["limit"], limit["delivered"], limit["met"])
            for limit in body["limits"]] == [("max_latency_ratio", 0.5, None, None),
                                             ("max_flops_ratio", 0.4, None, None),
                                             ("max_params", 1000, None, None)]

    worker = register_worker(api.engine, "a", "cpu", XEON, runtimes=["torch", "onnxruntime"])
    time.sleep(LiveWorkers(0).max_age_seconds)  # the API reads live workers once a second
    assert api.client.get(f"/v1/jobs/{job_id}").json()["waiting_for"] is None
    claim_next_job(api.engine, worker, "cpu", runtimes=["onnxruntime"], device_model=XEON)
    set_baseline(api.engine, job_id, {"latency_ms": 10.0, "flops": 1e6, "params": 5000},
                 device_type="cpu", device_model=XEON)
    transition(api.engine, job_id, JobStatus.SEARCHING, worker_id=worker)
    transition(api.engine, job_id, JobStatus.FINALIZING, worker_id=worker)
    succeed_job(api.engine, job_id, worker_id=worker, artifacts=[],
                best={"latency_ms": 4.6, "flops": 4.2e5, "params": 800, "trial": 3})
    body = api.client.get(f"/v1/jobs/{job_id}").json()
    assert body["device_model"] == XEON and body["waiting_for"] is None
    limits = {limit["name"]: limit for limit in body["limits"]}
    assert limits["max_latency_ratio"]["delivered"] == pytest.approx(0.46)
    assert limits["max_latency_ratio"]["met"] is True
    assert limits["max_latency_ratio"]["missed_by"] is None
    assert limits["max_flops_ratio"]["met"] is False
    assert abs(limits["max_flops_ratio"]["missed_by"] - 0.05) < 1e-9
    assert (limits["max_params"]["delivered"], limits["max_params"]["met"]) == (800, True)
