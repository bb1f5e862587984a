"""One worker takes a job from queued to succeeded on SQLite (in this process)."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy import select, update

from core.catalog import CHECKPOINT_FORMATS
from core.spec import JobSpec
from models import load_dataset
from models.checkpoints import sha256_file
from models.export import load_pruned
from search.storage import open_storage
from service.db import session_scope
from service.jobs import (
    Artifact,
    Job,
    JobStatus,
    get_job,
    list_events,
    request_cancel,
    submit_job,
)
from service.tenants import get_or_create_tenant
from tests.support import tiny_spec
from tests.support.cluster import PHASE_POINTS
from tests.workers_tests.conftest import submit
from workers.worker import Worker

pytestmark = pytest.mark.slow


def test_a_job_goes_from_queued_to_a_loadable_checkpoint(sqlite_settings, sqlite_engine) -> None:
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id)
    Worker(sqlite_settings, device="cpu", threads=1).run_forever(exit_when_idle=True)

    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message)
    assert job.device_type == "cpu" and job.baseline["accuracy"] > 0.3
    widths = {group["name"]: group["channels"] for group in job.baseline["groups"]}
    assert widths["conv1"] == 16 and widths["layer3.0.conv1"] == 64  # the job page's chart
    assert job.progress["trials_complete"] + job.progress["trials_pruned"] == 4
    assert job.best["flops"] <= 0.5 * job.baseline["flops"] * 1.0001
    study = optuna.load_study(study_name=job.study_name,
                              storage=open_storage(sqlite_settings.optuna_url))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 4
    warm = [t.user_attrs.get("warm_start") for t in finished]
    assert any(label and label.startswith("pls@") for label in warm)
    # A trained baseline the plan did not beat is the final fine-tune's teacher.
    beaten = study.trials[job.best["trial"]].user_attrs["accuracy"] > job.baseline["accuracy"]
    assert job.best["distilled"] is not beaten

    with session_scope(sqlite_engine) as session:
        artifacts = {a.kind: a for a in session.scalars(
            select(Artifact).where(Artifact.job_id == job_id))}
        paths = {kind: (a.path, a.sha256, a.size) for kind, a in artifacts.items()}
    assert set(paths) == set(CHECKPOINT_FORMATS)
    for path, digest, _size in paths.values():
        assert sha256_file(path) == digest
    model = load_pruned(paths["safetensors"][0])
    splits = load_dataset("digits", image_size=16, seed=0)
    with torch.inference_mode():
        assert model(splits.example_input(2)).shape == (2, 10)
    assert model.topiary_metadata["plan"] == job.best["plan"]
    # How to feed it an image travels with it (README, "Feeding one image").
    assert model.topiary_metadata["preprocessing"] == splits.export_metadata()
    assert model.topiary_metadata["preprocessing"]["labels"] == list("0123456789")
    events = list_events(sqlite_engine, job_id)
    kinds = [event.kind for event in events]
    assert "trial" in kinds and "baseline" in kinds and "warm_start" in kinds
    # Every phase the fault injectors wait for (tests/support/cluster.py, bench/chaos.py)
    # is one a job really goes through (a renamed phase left a fault point dead once).
    phases = [event.message for event in events if event.kind == "phase"]
    for point, (_status, prefix) in PHASE_POINTS.items():
        assert any(phase.startswith(prefix) for phase in phases), (point, phases)


def test_a_spec_the_worker_cannot_read_fails_its_job_and_the_worker_goes_on(
        sqlite_settings, sqlite_engine) -> None:
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    # A field this worker does not know: the spec of a newer server.
    unreadable = submit(sqlite_engine, sqlite_settings, tenant.id)
    with session_scope(sqlite_engine) as session:
        session.execute(update(Job).where(Job.id == unreadable).values(
            spec={**get_job(sqlite_engine, unreadable).spec, "priority": "high"}))
    # Trials of optimiser steps: the stored spec holds trial_epochs too, which once read as
    # "both" in the worker and ended it.
    spec = tiny_spec(search={"n_trials": 2})
    spec["fine_tune"] = {**spec["fine_tune"], "trial_steps": 3}
    del spec["fine_tune"]["trial_epochs"]
    with session_scope(sqlite_engine) as session:
        stepped = submit_job(session, tenant.id, JobSpec.model_validate(spec),
                             data_root=sqlite_settings.data_root, max_active_jobs=100).id
    Worker(sqlite_settings, device="cpu", threads=1).run_forever(exit_when_idle=True)

    job = get_job(sqlite_engine, unreadable)
    assert job.status == JobStatus.FAILED.value and job.error_code == "invalid_spec"
    assert "priority" in job.error_message and "version" in job.error_message
    job = get_job(sqlite_engine, stepped)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message)
    assert job.spec["fine_tune"]["trial_steps"] == 3


def test_no_feasible_plan_fails_the_job_with_a_reason(sqlite_settings, sqlite_engine) -> None:
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id,
                    objective={"constraints": {"max_params": 10}},
                    search={"n_trials": 2, "warm_start": []})
    Worker(sqlite_settings, device="cpu", threads=1).run_forever(exit_when_idle=True)
    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.FAILED.value
    assert job.error_code == "no_feasible_plan"
    assert "max_params by" in job.error_message and "loosen" in job.error_message


def test_a_cancel_request_stops_the_job(sqlite_settings, sqlite_engine) -> None:
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id, search={"n_trials": 50})
    worker = Worker(sqlite_settings, device="cpu", threads=1)

    def cancel_after_first_trial(engine=sqlite_engine) -> None:
        import threading
        import time

        def watch() -> None:
            while get_job(engine, job_id).progress is None:
                time.sleep(0.2)
            request_cancel(engine, tenant.id, job_id)

        threading.Thread(target=watch, daemon=True).start()

    cancel_after_first_trial()
    worker.run_forever(exit_when_idle=True)
    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.CANCELLED.value
    assert job.progress["trials_complete"] < 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [True, False])
def test_a_job_runs_on_cuda_from_baseline_to_checkpoint(sqlite_settings, sqlite_engine,
                                                        amp: bool) -> None:
    """Everything on the GPU: splits kept there, both warm-start scorers, CUDA-event
    latency, fine-tunes with AMP or in float32, and a checkpoint that loads on the CPU."""
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id,
                    latency={"device": "cuda"}, search={"warm_start": ["attention", "pls"]},
                    objective={"constraints": {"max_latency_ratio": 0.9}},
                    fine_tune={"amp": amp})
    Worker(sqlite_settings, device="cuda", threads=1).run_forever(exit_when_idle=True)

    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message)
    assert job.device_type == "cuda" and job.baseline["accuracy"] > 0.3
    assert job.best["latency_ms"] <= 0.9 * job.baseline["latency_ms"] * 1.0001
    with session_scope(sqlite_engine) as session:
        path = session.scalars(select(Artifact.path).where(Artifact.job_id == job_id,
                                                           Artifact.kind == "safetensors")).one()
    model = load_pruned(path)
    assert next(model.parameters()).device.type == "cpu"
    with torch.inference_mode():
        assert model(load_dataset("digits", image_size=16).example_input(2)).shape == (2, 10)
