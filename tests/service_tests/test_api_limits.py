"""What one key or tenant may spend: request rates (429 with Retry-After and RateLimit
headers, counted where every API process sees them), jobs per day, stored uploads, and
the deletions that give storage back. Plus the response rules every API answer follows:
no-store, generic 5xx with a request id, the docs and metrics behind settings, private
files, and builder arguments checked against the catalog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors

from service.api.app import create_app
from service.api.ratelimit import RequestRates, SweptMemoryStorage
from service.config import Settings
from service.jobs import JobStatus, append_event, list_events, request_cancel, transition
from tests.service_tests.conftest import Api, spec_json

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
REDIS_URL = os.environ.get("TOPIARY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@contextmanager
def client_for(api: Api, **settings: Any) -> Iterator[TestClient]:
    """A second app on the same database with other settings, as ``api``'s tenant."""
    with TestClient(create_app(api.settings.model_copy(update=settings))) as client:
        client.headers["Authorization"] = f"Bearer {api.key.key}"
        yield client


def _safetensors(values: int = 4) -> bytes:
    return save_safetensors({"w": np.ones(values, dtype=np.float32)})


@sqlite_only
def test_a_key_over_its_rate_gets_429_with_retry_after_and_ratelimit_headers(api: Api) -> None:
    with client_for(api, rate_limit="3/minute") as client:
        answers = [client.get("/v1/architectures") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a.headers["RateLimit-Limit"] == "3" for a in answers)
        refused = answers[-1]
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert int(refused.headers["RateLimit-Reset"]) == int(refused.headers["Retry-After"])
        assert refused.json()["code"] == "rate_limited" and "TOPIARY_RATE_LIMIT" in refused.text
        # Per key: another tenant's key still passes; a body is never read when refused.
        assert client.get("/v1/jobs", headers=api.other_tenant_headers()).status_code == 200
        assert client.post("/v1/jobs", json=spec_json()).status_code == 429


def test_every_api_process_counts_against_one_shared_limit(api: Api) -> None:
    """Two apps stand for two API processes (or replicas) with the same Redis."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {REDIS_URL} ({error})")
    rate = f"4/minute;{uuid.uuid4().int % 10**6 + 5}/hour"  # a namespace of this run's own
    with client_for(api, rate_limit=rate, rate_limit_storage=REDIS_URL) as first, \
            client_for(api, rate_limit=rate, rate_limit_storage=REDIS_URL) as second:
        statuses = [client.get("/v1/jobs").status_code
                    for client in (first, second, first, second, first)]
    assert statuses == [200, 200, 200, 200, 429]


def test_without_a_shared_store_each_process_enforces_its_share() -> None:
    rates = RequestRates(Settings(rate_limit="10/second;100/minute", api_processes=4))
    assert [item.amount for item in rates.items] == [3, 25]
    shared = RequestRates(Settings(rate_limit="10/second", api_processes=4,
                                   rate_limit_storage="redis://127.0.0.1:6379/15"))
    assert [item.amount for item in shared.items] == [10]


def test_in_memory_counters_sweep_expired_keys_at_most_once_a_second() -> None:
    """`limits`' MemoryStorage sweeps every counted key after every increment (a request
    cost O(active keys)); ours sweeps once a second and still frees expired keys."""
    async def scenario() -> tuple[int, int, list[str]]:
        rates = RequestRates(Settings(rate_limit="1/second"))
        for number in range(300):
            await rates.hit(f"key-{number}")
            await asyncio.sleep(0)  # where the sweep, a task, would run
        storage = rates._current_limiter().storage
        assert isinstance(storage, SweptMemoryStorage)
        sweeps, held = storage.sweeps, len(storage.storage)
        await asyncio.sleep(1.1)  # every window ends, and a sweep is due
        await rates.hit("late")
        await asyncio.sleep(0.05)
        return sweeps, held, list(storage.storage)

    sweeps, held, left = asyncio.run(scenario())
    assert (sweeps, held) == (1, 300)
    assert len(left) == 1 and "late" in left[0]


@sqlite_only
def test_the_daily_job_quota_is_429_until_the_window_renews(api: Api) -> None:
    with client_for(api, max_jobs_per_day=2) as client:
        first = client.post("/v1/jobs", json=spec_json(name="a")).json()["id"]
        assert client.post("/v1/jobs", json=spec_json(name="b")).status_code == 201
        refused = client.post("/v1/jobs", json=spec_json(name="c"))
        assert refused.status_code == 429 and refused.json()["code"] == "job_quota_exceeded"
        assert 23 * 3600 < int(refused.headers["Retry-After"]) <= 24 * 3600
        # Cancelling and deleting gives nothing back: the count is of submissions.
        assert client.post(f"/v1/jobs/{first}/cancel").status_code == 200
        assert client.delete(f"/v1/jobs/{first}").status_code == 204
        assert client.post("/v1/jobs", json=spec_json(name="d")).status_code == 429
        # Another tenant has its own quota.
        other = api.other_tenant_headers()
        assert client.post("/v1/jobs", json=spec_json(), headers=other).status_code == 201


@sqlite_only
def test_the_unfinished_job_cap_says_when_to_retry(api: Api) -> None:
    for index in range(api.settings.max_concurrent_jobs_per_tenant):
        api.client.post("/v1/jobs", json=spec_json(name=f"j{index}"))
    refused = api.client.post("/v1/jobs", json=spec_json())
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


@sqlite_only
def test_the_upload_quota_counts_stored_bytes_and_deletion_frees_them(api: Api) -> None:
    content = _safetensors(100_000)  # 400 KB
    with client_for(api, upload_quota_mb=1.0) as client:
        kept = [client.post("/v1/weights", files={"file": ("w.safetensors", content)})
                for _ in range(2)]
        assert [k.status_code for k in kept] == [201, 201]
        refused = client.post("/v1/weights", files={"file": ("w.safetensors", content)})
        assert refused.status_code == 413 and refused.json()["code"] == "upload_quota_exceeded"
        assert "DELETE /v1/weights" in refused.json()["detail"]
        upload_id = kept[0].json()["id"]
        assert api.settings.upload_dir is not None
        stored = next(api.settings.upload_dir.rglob(f"{upload_id}.*"))
        assert client.delete(f"/v1/weights/{upload_id}").status_code == 204
        assert not stored.exists()
        assert client.get(f"/v1/weights/{upload_id}").status_code == 404
        assert client.delete(f"/v1/weights/{upload_id}").status_code == 404
        again = client.post("/v1/weights", files={"file": ("w.safetensors", content)})
        assert again.status_code == 201


def test_an_upload_is_deleted_only_by_its_tenant_and_not_while_a_job_needs_it(
        api: Api) -> None:
    upload_id = api.client.post("/v1/weights", files={
        "file": ("w.safetensors", _safetensors())}).json()["id"]
    other = api.other_tenant_headers()
    assert api.client.delete(f"/v1/weights/{upload_id}", headers=other).status_code == 404
    job = api.client.post("/v1/jobs", json=spec_json(
        model={"arch": "cifar_resnet20", "num_classes": 10, "weights": upload_id})).json()
    busy = api.client.delete(f"/v1/weights/{upload_id}")
    assert busy.status_code == 409 and job["id"] in busy.json()["detail"]
    request_cancel(api.engine, api.tenant_id, job["id"])
    assert api.client.delete(f"/v1/weights/{upload_id}").status_code == 204


def test_a_finished_job_is_deleted_with_its_log_files_and_trials(api: Api,
                                                                 optuna_url: str) -> None:
    import optuna

    job_id = api.succeeded_job("done", _safetensors())
    study = optuna.create_study(storage=optuna_url, study_name=f"job-{job_id}")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    from service.jobs import set_study_name

    set_study_name(api.engine, job_id, f"job-{job_id}")
    assert api.settings.artifact_dir is not None
    folder = api.settings.artifact_dir / job_id
    assert any(folder.iterdir())
    assert api.client.delete(f"/v1/jobs/{job_id}",
                             headers=api.other_tenant_headers()).status_code == 404
    assert api.client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert not folder.exists()
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert list_events(api.engine, job_id) == []
    assert f"job-{job_id}" not in [s.study_name for s in optuna.get_all_study_summaries(
        storage=optuna_url)]
    assert api.client.delete(f"/v1/jobs/{job_id}").status_code == 404


@sqlite_only
def test_an_unfinished_job_cannot_be_deleted(api: Api) -> None:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    for status in (None, JobStatus.PREPARING):
        if status:
            transition(api.engine, job_id, status)
        refused = api.client.delete(f"/v1/jobs/{job_id}")
        assert refused.status_code == 409 and "cancel it" in refused.json()["detail"]
    append_event(api.engine, job_id, "info", "still here")
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200


@sqlite_only
def test_downloads_answer_head_with_size_and_etag_and_no_body(api: Api) -> None:
    content = _safetensors(64)
    job_id = api.succeeded_job("done", content)
    head = api.client.head(f"/v1/jobs/{job_id}/checkpoint")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(content)
    get = api.client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert head.headers["etag"] == get.headers["etag"] and get.content == content
    missing = api.client.head(f"/v1/jobs/{job_id}/checkpoint", params={"format": "onnx"})
    assert missing.status_code == 404


@sqlite_only
def test_api_responses_are_never_stored_by_caches(api: Api) -> None:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    for response in (api.client.get(f"/v1/jobs/{job_id}"), api.client.get("/v1/jobs"),
                     api.client.get(f"/v1/jobs/{'0' * 32}"),
                     api.client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}),
                     api.client.post("/v1/jobs", json={})):
        assert response.headers["Cache-Control"] == "no-store", response.request.url
    assert api.client.get("/ui/").headers["Cache-Control"] == "no-cache"  # its own


def test_a_database_failure_is_a_generic_503_with_a_request_id(
        settings: Settings, migrated_url: str, caplog: pytest.LogCaptureFixture) -> None:
    if migrated_url.startswith("sqlite"):
        assert settings.home is not None
        folder = settings.home / "not-a-database"
        folder.mkdir()
        broken = f"sqlite:///{folder}"
    else:
        broken = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    with TestClient(create_app(settings.model_copy(update={"database_url": broken}))) as client:
        with caplog.at_level(logging.ERROR, logger="service.api.errors"):
            response = client.get("/v1/jobs", headers={"Authorization": f"Bearer tpy_{'x' * 43}"})
            proxied = client.get("/readyz", headers={"X-Request-ID": "proxy-id-42"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    body = response.json()
    assert body["code"] == "database_error" and body["request_id"] in body["detail"]
    assert response.headers["X-Request-ID"] == body["request_id"]
    for secret in ("TOPIARY_", "sqlite", "psycopg", "pool", "127.0.0.1", "Error"):
        assert secret not in response.text, secret
    assert proxied.json()["request_id"] == "proxy-id-42"
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == body["request_id"]]
    assert logged and logged[0].exc_info and "TOPIARY_DATABASE_URL" in str(logged[0].exc_info[1])


@sqlite_only
def test_metrics_and_docs_follow_their_settings(api: Api) -> None:
    anonymous = {"Authorization": ""}
    assert api.client.get("/metrics", headers=anonymous).status_code == 401
    assert api.client.get("/metrics").status_code == 200  # any valid key
    # The test client is not on loopback: the docs are not served to it...
    assert api.client.get("/docs", headers=anonymous).status_code == 404
    assert api.client.get("/openapi.json", headers=anonymous).status_code == 401
    assert api.client.get("/openapi.json").status_code == 200  # ...the schema to a key
    with client_for(api, metrics="off", docs="off") as closed:
        assert closed.get("/metrics").status_code == 404
        assert closed.get("/openapi.json").status_code == 404
    with client_for(api, metrics="public", docs="public") as public:
        assert public.get("/metrics", headers=anonymous).status_code == 200
        page = public.get("/docs", headers=anonymous)
        assert page.status_code == 200
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "docs.js", "favicon.png"):
            answer = public.get(f"/docs/{asset}", headers=anonymous)
            assert answer.status_code == 200 and len(answer.content) > 100, asset
        assert public.get("/docs/../../etc/passwd", headers=anonymous).status_code == 404


def test_files_and_folders_are_created_private(tmp_path: Path) -> None:
    from service.db import migrate
    from service.tenants import create_api_key as make_key

    settings = Settings(home=tmp_path / "fresh" / "home", rate_limit="1000/second")
    app = create_app(settings)  # creates the folders
    migrate(settings.database_url)
    key = make_key(app.state.engine, "acme")
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key.key}"
        upload = client.post("/v1/weights", files={"file": ("w.safetensors", _safetensors())})
        assert upload.status_code == 201
    assert settings.upload_dir is not None
    stored = next(p for p in settings.upload_dir.rglob("*") if p.is_file())
    folders = [settings.home, settings.data_root, settings.artifact_dir, settings.upload_dir,
               stored.parent, tmp_path / "fresh"]
    for folder in folders:
        assert folder is not None
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for file in (stored, settings.home / "topiary.db"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


@sqlite_only
def test_builder_arguments_are_typed_and_bounded_by_the_catalog(api: Api) -> None:
    deep: dict[str, Any] = {}
    level = deep
    for _ in range(300):
        level["a"] = {}
        level = level["a"]
    for arguments, said in (({"width": 1_000_000_000}, "at most 128"),
                            ({"width": True}, "must be an integer"),
                            ({"width": 16.5}, "must be an integer"),
                            ({"in_channels": 2}, "one of 1, 3"),
                            ({"width": deep}, "must be an integer"),
                            (deep, "takes arguments")):
        response = api.client.post("/v1/jobs", json=spec_json(
            model={"arch": "cifar_resnet20", "num_classes": 10, "arguments": arguments}))
        assert response.status_code == 422, (arguments, response.text[:200])
        assert said in response.text
    accepted = api.client.post("/v1/jobs", json=spec_json(
        model={"arch": "cifar_resnet20", "num_classes": 10, "arguments": {"width": 8}}))
    assert accepted.status_code == 201
    rules = {a["name"]: a for a in api.client.get("/v1/architectures").json()}
    assert rules["cifar_resnet20"]["argument_rules"]["width"]["maximum"] == 128
