from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from service.api.app import create_app
from service.config import Settings
from service.errors import ConfigurationError
from service.jobs import JobStatus, transition
from service.tenants import KEY_PREFIX, revoke_api_key
from tests.service_tests.conftest import Api, spec_json


def _locs(response: Any) -> set[str]:
    return {".".join(map(str, error["loc"])) for error in response.json()["detail"]}


def test_submit_read_and_list(api: Api) -> None:
    created = api.client.post("/v1/jobs", json=spec_json(name="first"))
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["name"] == "first" and job["attempts"] == 0
    assert job["spec"]["search"]["n_trials"] == 4 and job["spec"]["fine_tune"]["distill"]
    assert job["progress"]["trials_total"] == 4 and job["error"] is None
    read = api.client.get(f"/v1/jobs/{job['id']}")
    assert read.status_code == 200 and read.json() == job

    second = api.client.post("/v1/jobs", json=spec_json(name="second")).json()
    transition(api.engine, second["id"], JobStatus.CANCELLED)
    listing = api.client.get("/v1/jobs").json()
    assert [j["name"] for j in listing["data"]] == ["second", "first"]
    assert listing["count"] == 2
    page = api.client.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()
    assert [j["name"] for j in page["data"]] == ["first"] and page["count"] == 2
    queued = api.client.get("/v1/jobs", params={"status": "queued"}).json()
    assert [j["name"] for j in queued["data"]] == ["first"] and queued["count"] == 1
    assert api.client.get("/v1/jobs", params={"status": "exploded"}).status_code == 422
    assert api.client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_invalid_spec_lists_every_bad_field(api: Api) -> None:
    spec = spec_json(model={"arch": "resnet9000"}, dataset={"name": "emnist"},
                     objective={"mode": "constrained", "constraints": {"max_latency_ratio": 1.5}},
                     search={"n_trials": 0}, surprise=True)
    response = api.client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_request"
    assert {"body.model.arch", "body.dataset.name",
            "body.objective.constraints.max_latency_ratio", "body.search.n_trials",
            "body.surprise"} <= _locs(response)
    assert all("input" not in error for error in body["detail"])


@pytest.mark.parametrize("body", ["{not json", "[]", "null"])
def test_malformed_bodies_are_422_not_500(api: Api, body: str) -> None:
    response = api.client.post("/v1/jobs", content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_dataset_root_must_exist_inside_the_data_root(api: Api) -> None:
    assert api.settings.data_root is not None
    (api.settings.data_root / "cifar").mkdir()
    outside = api.client.post("/v1/jobs", json=spec_json(
        dataset={"name": "cifar10", "root": "../../etc"}))
    assert outside.status_code == 422 and outside.json()["code"] == "invalid_spec"
    assert _locs(outside) == {"body.dataset.root"}
    assert "outside" in outside.json()["detail"][0]["msg"]
    missing = api.client.post("/v1/jobs", json=spec_json(
        dataset={"name": "cifar10", "root": "nope"},
        model={"arch": "cifar_resnet20", "weights": "f" * 32}))
    assert _locs(missing) == {"body.dataset.root", "body.model.weights"}
    good = api.client.post("/v1/jobs", json=spec_json(dataset={"name": "cifar10",
                                                               "root": "cifar"}))
    assert good.status_code == 201


def test_imagefolder_without_num_classes_is_rejected(api: Api) -> None:
    assert api.settings.data_root is not None
    (api.settings.data_root / "flowers").mkdir()
    response = api.client.post("/v1/jobs", json=spec_json(
        model={"arch": "cifar_resnet20"}, dataset={"name": "imagefolder", "root": "flowers"}))
    assert response.status_code == 422 and _locs(response) == {"body.model.num_classes"}


def test_concurrent_job_cap_is_429(api: Api) -> None:
    cap = api.settings.max_concurrent_jobs_per_tenant
    ids = [api.client.post("/v1/jobs", json=spec_json()).json()["id"] for _ in range(cap)]
    refused = api.client.post("/v1/jobs", json=spec_json())
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_jobs"
    assert str(cap) in refused.json()["detail"]
    api.client.post(f"/v1/jobs/{ids[0]}/cancel")
    assert api.client.post("/v1/jobs", json=spec_json()).status_code == 201
    other = api.other_tenant_headers()
    assert api.client.post("/v1/jobs", json=spec_json(), headers=other).status_code == 201


def test_cancel(api: Api) -> None:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    cancelled = api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    done = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    for status in ("preparing", "searching", "finalizing", "succeeded"):
        transition(api.engine, done, status)
    conflict = api.client.post(f"/v1/jobs/{done}/cancel")
    assert conflict.status_code == 409 and conflict.json()["code"] == "invalid_transition"


def test_another_tenants_job_is_indistinguishable_from_a_missing_one(api: Api) -> None:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    other = api.other_tenant_headers()
    missing_id = "0" * 32
    for suffix in ("", "/cancel", "/trials", "/pareto", "/checkpoint", "/events?follow=false"):
        method = api.client.post if suffix == "/cancel" else api.client.get
        theirs = method(f"/v1/jobs/{job_id}{suffix}", headers=other)
        missing = method(f"/v1/jobs/{missing_id}{suffix}", headers=other)
        assert theirs.status_code == missing.status_code == 404, suffix
        assert theirs.json() == {"code": "not_found", "detail": f"job {job_id} not found"}
        assert missing.json()["detail"] == f"job {missing_id} not found"
    assert api.client.get("/v1/jobs", headers=other).json()["count"] == 0
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200


def test_reading_a_job_checks_the_key_in_the_jobs_own_query(api: Api) -> None:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(" ".join(statement.split()).lower())

    event.listen(Engine, "before_cursor_execute", record)
    try:
        assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    # One statement reads the job and checks the key; no lookup of the key of its own.
    [read] = [statement for statement in statements if "from jobs" in statement]
    assert "api_keys.key_hash" in read and "api_keys.revoked_at is null" in read
    assert not [statement for statement in statements
                if "api_keys" in statement and statement is not read]
    # A miss still tells a bad key (401) from a job this tenant does not have (404).
    missing = "0" * 32
    assert api.client.get(f"/v1/jobs/{missing}").status_code == 404
    assert api.client.get(f"/v1/jobs/{job_id}",
                          headers=api.other_tenant_headers()).status_code == 404
    unknown = {"Authorization": f"Bearer {KEY_PREFIX}{'x' * 32}"}
    for wanted in (job_id, missing, "not-an-id"):
        assert api.client.get(f"/v1/jobs/{wanted}", headers=unknown).status_code == 401
    revoke_api_key(api.engine, api.key.prefix)
    revoked = api.client.get(f"/v1/jobs/{job_id}")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_requests_need_a_valid_unrevoked_key(api: Api) -> None:
    anonymous = {"Authorization": ""}
    for path in ("/v1/jobs", "/v1/architectures", "/v1/datasets"):
        response = api.client.get(path, headers=anonymous)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert "topiary keys create" in response.json()["detail"]
    for header in ("Bearer tpy_nope", "Basic abc"):
        assert api.client.get("/v1/jobs", headers={"Authorization": header}).status_code == 401
    assert api.client.get("/v1/jobs").status_code == 200
    revoke_api_key(api.engine, api.key.prefix)
    revoked = api.client.get("/v1/jobs")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_auth_none_acts_as_the_default_tenant(settings: Settings) -> None:
    open_settings = settings.model_copy(update={"auth": "none", "host": "127.0.0.1"})
    with TestClient(create_app(open_settings)) as client:
        job = client.post("/v1/jobs", json=spec_json())
        assert job.status_code == 201
        assert client.get("/v1/jobs").json()["count"] == 1
    with pytest.raises(ConfigurationError, match="loopback"):
        create_app(settings.model_copy(update={"auth": "none", "host": "0.0.0.0"}))


def test_catalog(api: Api) -> None:
    architectures = api.client.get("/v1/architectures").json()
    assert "cifar_resnet20" in {a["name"] for a in architectures}
    datasets = {d["name"]: d for d in api.client.get("/v1/datasets").json()}
    assert datasets["digits"]["needs_root"] is False and datasets["cifar10"]["needs_root"]


def test_health_readiness_metrics_and_openapi(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    api.client.get(f"/v1/jobs/{job_id}")
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'topiary_jobs{status="queued"} 1.0' in text
    assert 'topiary_jobs{status="succeeded"} 0.0' in text
    assert ('topiary_http_request_duration_seconds_count{method="GET",'
            'route="/v1/jobs/{job_id}",status="200"} 1.0') in text
    assert 'route="/v1/jobs",status="201"' in text
    assert api.client.get("/openapi.json").status_code == 200


def test_readyz_is_503_while_the_database_is_unreachable(settings: Settings,
                                                         migrated_url: str) -> None:
    if migrated_url.startswith("sqlite"):
        assert settings.home is not None
        folder = settings.home / "not-a-database"
        folder.mkdir()
        broken = f"sqlite:///{folder}"
    else:
        broken = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    update = {"database_url": broken, "metrics": "public"}
    with TestClient(create_app(settings.model_copy(update=update))) as client:
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["code"] == "database_error"
        assert response.headers["Retry-After"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        # A well-formed key needs the database to be judged.
        unknown = client.get("/v1/jobs", headers={"Authorization": f"Bearer tpy_{'x' * 43}"})
        assert unknown.status_code == 503


@pytest.mark.parametrize("job_id", ["nope", "%00", "a" * 500, "0" * 31 + "\u00e9"])
def test_malformed_ids_are_404_on_every_route(api: Api, job_id: str) -> None:
    for suffix in ("", "/cancel", "/trials", "/pareto", "/checkpoint", "/events"):
        method = api.client.post if suffix == "/cancel" else api.client.get
        response = method(f"/v1/jobs/{job_id}{suffix}")
        assert response.status_code == 404, (suffix, response.text)
    assert api.client.get(f"/v1/weights/{job_id}").status_code == 404


def test_strange_values_are_client_errors(api: Api) -> None:
    nul_name = api.client.post("/v1/jobs", json=spec_json(name="a\u0000b"))
    assert nul_name.status_code == 422 and _locs(nul_name) == {"body.name"}
    nul_root = api.client.post("/v1/jobs", json=spec_json(
        dataset={"name": "cifar10", "root": "x\u0000y"}))
    assert nul_root.status_code == 422 and _locs(nul_root) == {"body.dataset.root"}
    bad_weights = api.client.post("/v1/jobs", json=spec_json(
        model={"arch": "cifar_resnet20", "weights": "../../etc/passwd\u0000"}))
    assert bad_weights.status_code == 422 and _locs(bad_weights) == {"body.model.weights"}
    unicode_name = api.client.post("/v1/jobs", json=spec_json(name="résnet ✂ 剪枝"))
    assert unicode_name.status_code == 201
    job_id = unicode_name.json()["id"]
    assert api.client.get(f"/v1/jobs/{job_id}/events",
                          params={"follow": "false", "after": 2**70}).status_code == 422
    assert api.client.get(f"/v1/jobs/{job_id}/events", params={"follow": "false"},
                          headers={"Last-Event-ID": "9" * 40}).status_code == 200
    # Accepted but past any event id (a 32-bit key: PostgreSQL refused the comparison).
    for beyond in ({"params": {"follow": "false", "after": 2**61}},
                   {"params": {"follow": "false"}, "headers": {"Last-Event-ID": "9" * 18}}):
        response = api.client.get(f"/v1/jobs/{job_id}/events", **beyond)
        assert response.status_code == 200 and response.json() == [], response.text
    assert api.client.get("/v1/jobs", params={"offset": 2**40}).status_code == 422
