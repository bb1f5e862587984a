"""Hostile and broken input, written by hand: each gets a 4xx whose message names the problem.

Already covered elsewhere and not repeated here (tests/service_tests):
malformed JSON bodies (test_api_jobs: ``{not json``, ``[]``, ``null``), every bad field
listed at once, ``..`` out of the data root, NUL characters, pickles that would run
code (a torch zip, a bare pickle, a global hidden behind POPs), truncated
safetensors and zips, an oversized upload with a declared length, JSON bodies over
1 MiB declared or streamed (test_api_weights); malformed YAML spec files
(test_client_cli).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors

from cli.client import ClientError, load_spec_file
from models import build_model
from service.jobs import JobStatus, get_job, list_events
from tests.support import spec_json
from tests.support.fixtures import Api
from workers.worker import Worker

# Request validation does not depend on the database: one backend is enough, except where
# strings reach the database (odd unicode), which runs on both.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _post_json(api: Api, body: str | bytes) -> Any:
    return api.client.post("/v1/jobs", content=body,
                           headers={"Content-Type": "application/json"})


def _messages(response: Any) -> str:
    detail = response.json()["detail"]
    if isinstance(detail, list):
        return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in detail)
    return str(detail)


@pytest.mark.parametrize(("change", "field"), [
    ({"search": {"n_trials": "ten"}}, "search.n_trials"),
    ({"search": {"n_trials": 10**40}}, "search.n_trials"),
    ({"search": {"n_trials": 2.5}}, "search.n_trials"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"model": ["cifar_resnet20"]}, "model"),
    ({"dataset": None}, "dataset"),
    ({"dataset": {"name": "digits", "image_size": True}}, "dataset.image_size"),
    ({"objective": {"constraints": "fast please"}}, "objective.constraints"),
    ({"objective": {"constraints": {"max_latency_ms": 1e300}}},
     "objective.constraints.max_latency_ms"),
    ({"name": ""}, "name"),
    ({"name": "x" * 10_000}, "name"),
    ({"fine_tune": {"learning_rate": -0.1}}, "fine_tune.learning_rate"),
])
@sqlite_only
def test_wrong_types_and_huge_numbers_name_the_field(api: Api, change: dict[str, Any],
                                                     field: str) -> None:
    response = api.client.post("/v1/jobs", json=spec_json(**change))
    assert response.status_code == 422, response.text
    assert f"body.{field}" in _messages(response)


@sqlite_only
def test_numbers_json_cannot_hold_are_refused(api: Api) -> None:
    spec = json.dumps(spec_json())
    for literal in ("1e999", "Infinity", "NaN", "-Infinity"):
        body = spec.replace('"max_latency_ratio": 0.5', f'"max_latency_ratio": {literal}')
        response = _post_json(api, body)
        assert response.status_code == 422, (literal, response.text)
        assert "max_latency_ratio" in _messages(response) or "JSON" in _messages(response)


def test_odd_unicode_round_trips_and_broken_unicode_is_refused(api: Api) -> None:
    name = "résumé 🌳 שלום \u200b\u202e e\u0301 𝕏"
    created = api.client.post("/v1/jobs", json=spec_json(name=name))
    assert created.status_code == 201, created.text
    assert api.client.get(f"/v1/jobs/{created.json()['id']}").json()["name"] == name
    body = json.dumps(spec_json(name="PLACEHOLDER"))
    lone = _post_json(api, body.replace("PLACEHOLDER", "\\ud800 half a pair"))
    assert lone.status_code == 422 and "body.name" in _messages(lone)
    assert "unicode" in _messages(lone)
    invalid = _post_json(api, body.replace("PLACEHOLDER", "").encode().replace(
        b'"name": ""', b'"name": "\xff\xfe"'))
    assert 400 <= invalid.status_code < 500
    assert "pars" in _messages(invalid) or "unicode" in _messages(invalid).lower()
    deep = _post_json(api, "[" * 50_000 + "]" * 50_000)
    assert 400 <= deep.status_code < 500


@sqlite_only
def test_dataset_roots_cannot_escape_the_data_root(api: Api, tmp_path: Path) -> None:
    assert api.settings.data_root is not None
    outside = tmp_path / "secret"
    outside.mkdir()
    (api.settings.data_root / "escape").symlink_to(outside)
    (api.settings.data_root / "cifar").mkdir()
    for root in ("/etc", str(outside), "escape", "cifar/../../..", "cifar/../escape/.."):
        response = api.client.post("/v1/jobs", json=spec_json(
            dataset={"name": "cifar10", "root": root}))
        assert response.status_code == 422, root
        assert "outside the server's data root" in _messages(response), root
    encoded = api.client.post("/v1/jobs", json=spec_json(
        dataset={"name": "cifar10", "root": "%2e%2e/%2e%2e/etc"}))
    assert encoded.status_code == 422 and "no folder" in _messages(encoded)


@sqlite_only
def test_artifact_and_file_names_cannot_traverse(api: Api, tmp_path: Path) -> None:
    for path in ("/v1/jobs/..%2F..%2Fetc%2Fpasswd/checkpoint", "/v1/jobs/../../etc/passwd",
                 "/v1/weights/..%2F..%2Fetc%2Fpasswd"):
        response = api.client.get(path)
        assert response.status_code == 404, path
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    bad_format = api.client.get(f"/v1/jobs/{job_id}/checkpoint",
                                params={"format": "../../etc/passwd"})
    assert bad_format.status_code == 422 and "query.format" in _messages(bad_format)

    target = tmp_path / "evil.safetensors"
    content = save_safetensors({"w": torch.ones(2)})
    upload = api.client.post("/v1/weights", files={"file": (f"../../../..{target}", content)})
    assert upload.status_code == 201, upload.text
    assert upload.json()["filename"] == "evil.safetensors"
    assert not target.exists()
    assert api.settings.upload_dir is not None
    stored = [p for p in api.settings.upload_dir.rglob("*") if p.is_file()]
    assert [p.parent.name for p in stored] == [str(api.tenant_id)]


@sqlite_only
def test_a_streamed_upload_past_the_limit_is_413_and_leaves_nothing(api: Api) -> None:
    limit = api.settings.max_upload_bytes
    boundary = "topiaryboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.safetensors"\r\nContent-Type: application/octet-stream\r\n\r\n')

    def chunks():  # type: ignore[no-untyped-def]
        yield head.encode()
        for _ in range(limit // (256 * 1024) + 4):
            yield b"\0" * (256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = api.client.post("/v1/weights", content=chunks(), headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert "TOPIARY_MAX_UPLOAD_MB" in response.json()["detail"]
    assert api.settings.upload_dir is not None
    assert [p for p in api.settings.upload_dir.rglob("*") if p.is_file()] == []


def test_a_yaml_spec_with_code_tags_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ClientError, match="not valid YAML"):
        load_spec_file(spec)
    assert not marker.exists()


@sqlite_only
def test_weights_that_do_not_fit_fail_the_job_naming_the_keys(api: Api) -> None:
    """The API is torch-free and cannot build the network, so an upload is only checked
    for being safe, well-formed weights; the first worker to claim the job checks the
    shapes before any training and fails the job with the offending keys."""
    torch.manual_seed(0)
    # Narrow (width 8) to stay under the test server's 1 MiB upload limit.
    wrong = build_model("cifar_resnet20", num_classes=7, width=8).state_dict()  # spec: 10
    buffer = io.BytesIO()
    torch.save(wrong, buffer)
    upload = api.client.post("/v1/weights", files={"file": ("other.pt", buffer.getvalue())})
    assert upload.status_code == 201, upload.text
    job = api.client.post("/v1/jobs", json=spec_json(
        model={"arch": "cifar_resnet20", "num_classes": 10, "arguments": {"width": 8},
               "weights": upload.json()["id"]},
        latency={"device": "cpu"}))
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    Worker(api.settings, device="cpu", threads=1).run_forever(exit_when_idle=True)

    failed = get_job(api.engine, job_id)
    assert failed.status == JobStatus.FAILED.value
    assert failed.error_code == "checkpoint_error"
    assert "fc.weight: file has [7, 32], model expects [10, 32]" in failed.error_message
    assert "fc.bias" in failed.error_message and "num_classes" in failed.error_message
    assert failed.baseline is None  # refused before any training or measuring
    read = api.client.get(f"/v1/jobs/{job_id}").json()
    assert read["error"]["code"] == "checkpoint_error"
    assert "fc.weight" in read["error"]["message"]
    assert not any("training a baseline" in e.message for e in list_events(api.engine, job_id))
