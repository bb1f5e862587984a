"""The final fine-tune distils from the unpruned network only when that network is a
teacher worth following (``workers.finalize._teacher``)."""

from __future__ import annotations

import io

import optuna
import pytest
import torch
from safetensors.torch import save

from models.architectures import build_model
from search.storage import open_storage
from service.db import session_scope
from service.jobs import JobStatus, get_job, list_events
from service.tenants import get_or_create_tenant
from service.uploads import store_upload
from tests.workers_tests.conftest import submit
from workers.worker import Worker

pytestmark = pytest.mark.slow


def test_an_untrained_upload_is_no_teacher_for_the_final_fine_tune(
        sqlite_settings, sqlite_engine) -> None:
    """A network uploaded untrained (10% on ten classes) is beaten by every plan after
    its trial fine-tune: its soft targets would hold the delivered network down, so the
    final fine-tune learns from the labels alone and the result and events say so."""
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    torch.manual_seed(0)
    untrained = save(build_model("cifar_resnet20", num_classes=10).state_dict())
    with session_scope(sqlite_engine) as session:
        upload = store_upload(session, sqlite_settings, tenant.id, "untrained.safetensors",
                              io.BytesIO(untrained)).id
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id,
                    model={"weights": upload}, search={"n_trials": 2})
    Worker(sqlite_settings, device="cpu", threads=1).run_forever(exit_when_idle=True)

    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message)
    study = optuna.load_study(study_name=job.study_name,
                              storage=open_storage(sqlite_settings.optuna_url))
    trial_accuracy = study.trials[job.best["trial"]].user_attrs["accuracy"]
    assert trial_accuracy > job.baseline["accuracy"]
    assert job.best["distilled"] is False
    [said] = [event for event in list_events(sqlite_engine, job_id)
              if "not distilling" in event.message]
    assert f"trial {job.best['trial']}" in said.message
    assert not any("with distillation" in event.message
                   for event in list_events(sqlite_engine, job_id) if event.kind == "phase")
