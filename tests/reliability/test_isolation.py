"""Tenants are walled off from each other; keys are kept hashed; a revoked key dies at once.

Already covered (tests/service_tests): another tenant's queued job is a 404 on every
job route, exactly like a missing id; another tenant's upload is a 404 and cannot
be used in a job; a revoked key is refused by the app that revoked it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors
from sqlalchemy import inspect, select, text

from service.api.app import create_app
from service.db import session_scope
from service.jobs import JobStatus, append_event, get_job, transition
from service.tables import ApiKey
from service.tenants import PREFIX_LENGTH, create_api_key, hash_key
from tests.support import REPOSITORY, spec_json, wait_for
from tests.support.fixtures import Api

JOB_ROUTES = ("", "/trials", "/pareto", "/events?follow=false", "/events",
              "/checkpoint?format=safetensors", "/checkpoint?format=onnx")


def _succeeded_job_with_checkpoint(api: Api) -> str:
    content = save_safetensors({"w": np.arange(8, dtype=np.float32)})
    job_id = api.succeeded_job("secret-plan", content)
    assert api.client.get(f"/v1/jobs/{job_id}/checkpoint").content == content
    return job_id


def _near_misses(identifier: str) -> list[str]:
    """Ids one hex digit away from a real one (what a guesser would try first)."""
    return [identifier[:i] + format((int(c, 16) + 1) % 16, "x") + identifier[i + 1:]
            for i, c in enumerate(identifier)][::4]


def test_another_tenant_cannot_list_read_cancel_or_download(api: Api) -> None:
    job_id = _succeeded_job_with_checkpoint(api)
    queued_id = api.client.post("/v1/jobs", json=spec_json(name="queued")).json()["id"]
    upload = api.client.post("/v1/weights", files={"file": ("w.safetensors", save_safetensors(
        {"w": np.ones(2, dtype=np.float32)}))}).json()["id"]
    other = api.other_tenant_headers()

    for status in (None, *JobStatus):
        params = {"status": status.value} if status else {}
        listing = api.client.get("/v1/jobs", params=params, headers=other).json()
        assert listing == {"data": [], "count": 0, "limit": 50, "offset": 0}, status
    for target in (job_id, queued_id, *_near_misses(job_id), "0" * 32):
        for route in JOB_ROUTES:
            response = api.client.get(f"/v1/jobs/{target}{route}", headers=other)
            assert response.status_code == 404, (target, route, response.text)
            assert response.json() == {"code": "not_found", "detail": f"job {target} not found"}
            assert "secret-plan" not in response.text
        cancel = api.client.post(f"/v1/jobs/{target}/cancel", headers=other)
        assert cancel.status_code == 404
    assert get_job(api.engine, queued_id).cancel_requested is False
    for target in (upload, *_near_misses(upload)):
        response = api.client.get(f"/v1/weights/{target}", headers=other)
        assert response.status_code == 404
        assert response.json()["detail"] == f"weights upload {target} not found"
    # The owner still sees all of it; ids near a real one do not exist for anyone.
    assert api.client.get(f"/v1/jobs/{job_id}/checkpoint").status_code == 200
    for target in _near_misses(job_id):
        assert api.client.get(f"/v1/jobs/{target}").status_code == 404


def _all_rows_as_text(api: Api) -> str:
    with api.engine.connect() as connection:
        tables = inspect(connection).get_table_names()
        rows = [json.dumps([str(v) for v in row])
                for table in tables
                for row in connection.execute(text(f'SELECT * FROM "{table}"'))]
    return "\n".join(rows)


def test_keys_are_stored_only_as_hashes(api: Api) -> None:
    keys = [api.key, create_api_key(api.engine, "globex"), create_api_key(api.engine, "acme")]
    with session_scope(api.engine) as session:
        stored = {row.prefix: row.key_hash for row in session.scalars(select(ApiKey))}
    assert stored == {key.prefix: hash_key(key.key) for key in keys}
    assert all(hash_key(key.key) == hashlib.sha256(key.key.encode()).hexdigest() for key in keys)
    dump = _all_rows_as_text(api)  # every table, every column: no secret part of any key
    for key in keys:
        assert key.key[PREFIX_LENGTH:] not in dump
        assert key.key[PREFIX_LENGTH:PREFIX_LENGTH + 8] not in dump


def _revoke_in_another_process(api: Api, prefix: str) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY),
                   "TOPIARY_DATABASE_URL": api.settings.database_url,
                   "TOPIARY_HOME": str(api.settings.home)}
    done = subprocess.run([sys.executable, "-m", "cli.main", "keys", "revoke", prefix],
                          cwd=REPOSITORY, env=environment, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_a_revoked_key_stops_working_at_once_on_every_replica(api: Api) -> None:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    transition(api.engine, job_id, JobStatus.PREPARING)
    headers = {"Authorization": f"Bearer {api.key.key}"}
    with TestClient(create_app(api.settings)) as replica:
        assert replica.get("/v1/jobs", headers=headers).status_code == 200
        received: list[str] = []
        stream_ended = threading.Event()

        def follow() -> None:
            with replica.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
                for line in stream.iter_lines():
                    received.append(line)
            stream_ended.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        wait_for(lambda: any(line.startswith("data:") for line in received), 30,
                 "the event stream to start")

        _revoke_in_another_process(api, api.key.prefix)
        for client in (api.client, replica):
            response = client.get("/v1/jobs", headers=headers)
            assert response.status_code == 401 and "revoked" in response.json()["detail"]
        # A stream opened before the revocation is cut, not left running.
        append_event(api.engine, job_id, "info", "written after the revocation")
        assert stream_ended.wait(30), "the open event stream outlived its key"
        assert not any("after the revocation" in line for line in received)
        assert "event: error" in received and any("was revoked" in line for line in received)
        transition(api.engine, job_id, JobStatus.CANCELLED)
        reader.join(5)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_per_tenant_limits_answer_429_and_413_with_a_message(api: Api, tmp_path: Path) -> None:
    cap = api.settings.max_concurrent_jobs_per_tenant
    for index in range(cap):
        assert api.client.post("/v1/jobs", json=spec_json(name=f"j{index}")).status_code == 201
    refused = api.client.post("/v1/jobs", json=spec_json())
    assert refused.status_code == 429
    assert f"already has {cap} unfinished jobs" in refused.json()["detail"]
    other = api.other_tenant_headers()
    assert api.client.post("/v1/jobs", json=spec_json(), headers=other).status_code == 201
    too_big: dict[str, Any] = {"file": ("big.safetensors",
                                        b"\0" * (api.settings.max_upload_bytes + 1))}
    for headers in (None, other):
        response = api.client.post("/v1/weights", files=too_big, headers=headers)
        assert response.status_code == 413
        assert f"{api.settings.max_upload_mb:g} MiB" in response.json()["detail"]
