from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from service.jobs import (
    JobStatus,
    append_event,
    record_artifact,
    set_study_name,
    transition,
)
from tests.service_tests.conftest import Api, spec_json

# name -> (state, accuracy, latency_ms, memory_mb, feasible)
TRIALS: dict[str, tuple[TrialState, float, float, float, bool]] = {
    "fast": (TrialState.COMPLETE, 0.80, 5.0, 4.0, True),
    "accurate": (TrialState.COMPLETE, 0.95, 12.0, 6.0, True),
    "small": (TrialState.COMPLETE, 0.85, 9.0, 2.0, True),
    "beaten": (TrialState.COMPLETE, 0.84, 9.5, 2.5, True),  # "small" is better on all three
    "infeasible": (TrialState.COMPLETE, 0.99, 1.0, 1.0, False),
    "failed": (TrialState.FAIL, 0.99, 1.0, 1.0, True),
}


def _make_study(url: str, name: str) -> None:
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    for label, (state, accuracy, latency, memory, feasible) in TRIALS.items():
        # As the objective stores a trial (core.trial.TrialRecord.store): the limits as
        # Optuna constraints (feasible when <= 0), the measurements as user attributes.
        attributes: dict[str, Any] = {
            "plan": {"label": label, "keep": {"layer1.0.conv1": 8}}, "accuracy": accuracy,
            "latency_ms": latency, "latency_p90_ms": latency * 1.1, "memory_mb": memory,
            "flops": 1e6, "params": 2e4, "fine_tune_seconds": 1.5,
            "fidelity": "short", "accuracy_probe": accuracy - 0.2}
        study.add_trial(create_trial(
            state=state, value=accuracy if state == TrialState.COMPLETE else None,
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs=attributes, constraints={"max_latency_ms": -0.2 if feasible else 0.3}))


def _submit(api: Api) -> str:
    return str(api.client.post("/v1/jobs", json=spec_json()).json()["id"])


def test_trials_and_pareto_from_a_real_study(api: Api) -> None:
    job_id = _submit(api)
    empty = api.client.get(f"/v1/jobs/{job_id}/trials").json()
    assert empty == {"job_id": job_id, "study_name": None, "data": [], "count": 0}
    _make_study(api.settings.optuna_url, f"job-{job_id}")
    set_study_name(api.engine, job_id, f"job-{job_id}")

    trials = api.client.get(f"/v1/jobs/{job_id}/trials").json()
    assert trials["count"] == len(TRIALS) and trials["study_name"] == f"job-{job_id}"
    by_label = {t["plan"]["label"]: t for t in trials["data"]}
    assert [t["number"] for t in trials["data"]] == list(range(len(TRIALS)))
    assert by_label["failed"]["state"] == "fail" and by_label["fast"]["state"] == "complete"
    fast = by_label["fast"]
    assert (fast["accuracy"], fast["latency_ms"], fast["memory_mb"], fast["feasible"]) == (
        0.80, 5.0, 4.0, True)
    assert fast["latency_p90_ms"] == 5.5 and fast["fine_tune_seconds"] == 1.5
    # What the accuracy measured (search.fidelity): the job page counts trials by it.
    assert (fast["fidelity"], fast["accuracy_probe"]) == ("short", pytest.approx(0.6))
    assert fast["rerank_of"] is None and fast["projected"] is None
    assert fast["values"] == [0.80] and by_label["failed"]["values"] is None

    pareto = api.client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert {t["plan"]["label"] for t in pareto["data"]} == {"fast", "accurate", "small"}


def test_study_named_but_not_created_yet_has_no_trials(api: Api) -> None:
    job_id = _submit(api)
    set_study_name(api.engine, job_id, "not-yet")
    assert api.client.get(f"/v1/jobs/{job_id}/pareto").json()["count"] == 0


def test_checkpoint_download(api: Api) -> None:
    job_id = _submit(api)
    missing = api.client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert missing.status_code == 404 and "no safetensors checkpoint" in missing.json()["detail"]
    assert api.settings.artifact_dir is not None
    payload = bytes(range(256)) * 4099
    path = api.settings.artifact_dir / f"{job_id}.safetensors"
    path.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    record_artifact(api.engine, job_id, "safetensors", str(path), len(payload), digest)

    response = api.client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert response.status_code == 200 and response.content == payload
    assert response.headers["content-length"] == str(len(payload))
    assert response.headers["etag"] == f'"{digest}"'
    assert "resnet20-digits.safetensors" in response.headers["content-disposition"]
    not_modified = api.client.get(f"/v1/jobs/{job_id}/checkpoint",
                                  headers={"If-None-Match": f'"{digest}"'})
    assert not_modified.status_code == 304 and not not_modified.content
    job = api.client.get(f"/v1/jobs/{job_id}").json()
    assert job["artifacts"] == [{"format": "safetensors", "size": len(payload), "sha256": digest,
                                 "url": f"/v1/jobs/{job_id}/checkpoint?format=safetensors"}]

    assert api.client.get(f"/v1/jobs/{job_id}/checkpoint?format=onnx").status_code == 404
    assert api.client.get(f"/v1/jobs/{job_id}/checkpoint?format=pickle").status_code == 422
    path.unlink()
    gone = api.client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert gone.status_code == 404 and "missing" in gone.json()["detail"]


def _read_sse(api: Api, url: str, headers: dict[str, str] | None = None
              ) -> list[tuple[str, dict[str, Any], str | None]]:
    """(event, data, id) of every event of a stream that ends by itself."""
    events: list[tuple[str, dict[str, Any], str | None]] = []
    current: dict[str, str] = {}
    with api.client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append((current.get("event", "message"), json.loads(current["data"]),
                                   current.get("id")))
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                current[field] = value.strip()
    return events


def test_events_as_json_and_as_a_finished_stream(api: Api) -> None:
    job_id = _submit(api)
    append_event(api.engine, job_id, "info", "baseline trained", {"accuracy": 0.97})
    listed = api.client.get(f"/v1/jobs/{job_id}/events", params={"follow": "false"}).json()
    assert [(e["kind"], e["message"]) for e in listed] == [
        ("status", "status: queued (submitted)"), ("info", "baseline trained")]
    assert listed[1]["data"] == {"accuracy": 0.97}
    after = api.client.get(f"/v1/jobs/{job_id}/events",
                           params={"follow": "false", "after": listed[0]["id"]}).json()
    assert [e["message"] for e in after] == ["baseline trained"]

    transition(api.engine, job_id, JobStatus.CANCELLED)
    events = _read_sse(api, f"/v1/jobs/{job_id}/events")
    assert [kind for kind, _, _ in events] == ["status", "info", "status", "end"]
    assert events[-1][1] == {"status": "cancelled"}
    assert events[1][2] == str(listed[1]["id"])
    resumed = _read_sse(api, f"/v1/jobs/{job_id}/events",
                        headers={"Last-Event-ID": str(listed[1]["id"])})
    assert [kind for kind, _, _ in resumed] == ["status", "end"]


def test_followed_stream_sees_events_written_while_it_is_open(api: Api) -> None:
    job_id = _submit(api)

    def run_the_job() -> None:
        time.sleep(0.3)
        for status in ("preparing", "searching"):
            transition(api.engine, job_id, status)
        append_event(api.engine, job_id, "trial", "trial 0 complete", {"number": 0})
        time.sleep(0.3)
        for status in ("finalizing", "succeeded"):
            transition(api.engine, job_id, status)

    writer = threading.Thread(target=run_the_job)
    writer.start()
    events = _read_sse(api, f"/v1/jobs/{job_id}/events")
    writer.join()
    statuses = [data["data"]["status"] for kind, data, _ in events if kind == "status"]
    assert statuses == ["queued", "preparing", "searching", "finalizing", "succeeded"]
    assert ("trial", "trial 0 complete") in {(k, d.get("message")) for k, d, _ in events}
    assert events[-1][0] == "end"
