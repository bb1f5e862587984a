"""A multi-fidelity job end to end: the finalising worker re-ranks the best plans before
the final fine-tune (each timed first as delivery will time it, the job having a latency
limit), and delivers the best re-ranked plan, its final fine-tune going on from the
re-rank's weights (SQLite, in this process)."""

from __future__ import annotations

import optuna
import pytest

from core.trial import TrialRecord
from search.storage import open_storage
from service.jobs import JobStatus, get_job, list_events
from service.tenants import get_or_create_tenant
from tests.workers_tests.conftest import submit
from workers.worker import Worker

pytestmark = pytest.mark.slow


def test_a_multi_fidelity_job_delivers_its_best_re_ranked_plan(sqlite_settings,
                                                              sqlite_engine) -> None:
    tenant = get_or_create_tenant(sqlite_engine, "acme")
    job_id = submit(sqlite_engine, sqlite_settings, tenant.id,
                    objective={"constraints": {"max_flops_ratio": 0.5,
                                               "max_latency_ratio": 0.95}},
                    search={"n_trials": 5, "fidelity": {"mode": "multi", "rerank": 2,
                                                        "rerank_factor": 1}})
    Worker(sqlite_settings, device="cpu", threads=1).run_forever(exit_when_idle=True)

    job = get_job(sqlite_engine, job_id)
    assert job.status == JobStatus.SUCCEEDED.value, (job.error_code, job.error_message)
    assert job.progress["trials_complete"] + job.progress["trials_pruned"] == 5
    study = optuna.load_study(study_name=job.study_name,
                              storage=open_storage(sqlite_settings.optuna_url))
    records = {trial.number: TrialRecord.from_trial(trial) for trial in study.trials}
    reranked = {number: record for number, record in records.items()
                if record.fidelity == "long"}
    assert 1 <= len(reranked) <= 2 and all(number >= 5 for number in reranked)
    best = max(reranked, key=lambda number: reranked[number].accuracy or 0.0)
    assert job.best["trial"] == best and job.best["plan"] == reranked[best].plan
    assert job.best["continued_rerank"] is True  # its final fine-tune went on from the re-rank
    for record in reranked.values():  # the final timing's latency, not its source trial's
        source = records[record.rerank_of]
        assert record.latency_ms != source.latency_ms and record.feasible is True
        assert record.latency_ratio is not None and record.latency_ratio <= 0.95
    assert {record.fidelity for number, record in records.items() if number < 5} <= {
        "probe", "short", "costs"}
    messages = [event.message for event in list_events(sqlite_engine, job_id)]
    assert any(message.startswith("re-ranking the 2 best plans") for message in messages)
    assert any(f"re-ranks trial {reranked[best].rerank_of}" in message for message in messages)
    assert any(message.startswith(f"fine-tuning the plan of trial {best}")
               and message.endswith("going on from its re-rank") for message in messages)
