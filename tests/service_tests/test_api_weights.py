from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_safetensors

from core.errors import UnsafeCheckpointError
from service.errors import InvalidUploadError
from service.weights_check import scan_pickle
from tests.service_tests.conftest import Api, spec_json


def _state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    return model.state_dict()


def torch_state_dict_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(_state_dict(), buffer)
    return buffer.getvalue()


def safetensors_bytes() -> bytes:
    return save_safetensors({"conv.weight": np.ones((4, 3, 3, 3), dtype=np.float32),
                             "conv.bias": np.zeros(4, dtype=np.float32)})


class _CreatesAFile:
    """Unpickling this runs a shell command that creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def _torch_like_zip(pickle_bytes: bytes) -> bytes:
    """The layout torch.save writes, with our own data.pkl."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/0", b"\0" * 16)
    return buffer.getvalue()


def _pop_trick_pickle(command: str) -> bytes:
    """Protocol 4: names os.system, hides it under allowed names, POPs them, STACK_GLOBAL."""
    def unicode(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode()

    return (b"\x80\x04" + unicode("posix") + unicode("system") + unicode("collections")
            + unicode("OrderedDict") + b"00" + b"\x93" + unicode(command) + b"\x85R.")


def _upload(api: Api, content: bytes, filename: str = "weights.bin"):  # type: ignore[no-untyped-def]
    return api.client.post("/v1/weights", files={"file": (filename, content)})


def _stored_files(api: Api) -> list[Path]:
    assert api.settings.upload_dir is not None
    return [p for p in api.settings.upload_dir.rglob("*") if p.is_file()]


def test_safetensors_upload_is_kept_and_usable_in_a_job(api: Api) -> None:
    content = safetensors_bytes()
    response = _upload(api, content, "resnet.safetensors")
    assert response.status_code == 201, response.text
    upload = response.json()
    assert (upload["format"], upload["tensor_count"], upload["size"]) == (
        "safetensors", 2, len(content))
    assert upload["sha256"] == hashlib.sha256(content).hexdigest()
    assert upload["filename"] == "resnet.safetensors"
    [stored] = _stored_files(api)
    assert stored.read_bytes() == content
    assert api.client.get(f"/v1/weights/{upload['id']}").json() == upload
    job = api.client.post("/v1/jobs", json=spec_json(
        model={"arch": "cifar_resnet20", "num_classes": 10, "weights": upload["id"]}))
    assert job.status_code == 201 and job.json()["spec"]["model"]["weights"] == upload["id"]


def test_torch_state_dict_upload_is_accepted_without_unpickling(api: Api) -> None:
    response = _upload(api, torch_state_dict_bytes(), "model.pt")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "torch_state_dict"
    assert response.json()["tensor_count"] == len(_state_dict())


def test_uploads_belong_to_their_tenant(api: Api) -> None:
    upload_id = _upload(api, safetensors_bytes()).json()["id"]
    other = api.other_tenant_headers()
    theirs = api.client.get(f"/v1/weights/{upload_id}", headers=other)
    missing = api.client.get(f"/v1/weights/{'0' * 32}", headers=other)
    assert theirs.status_code == missing.status_code == 404
    job = api.client.post("/v1/jobs", headers=other, json=spec_json(
        model={"arch": "cifar_resnet20", "weights": upload_id}))
    assert job.status_code == 422
    assert job.json()["detail"][0]["loc"] == ["body", "model", "weights"]


@pytest.mark.parametrize("wrap", ["torch_zip", "bare_pickle"])
def test_pickle_with_code_is_refused_and_never_run(api: Api, tmp_path: Path, wrap: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesAFile(marker), protocol=2)
    content = _torch_like_zip(payload) if wrap == "torch_zip" else payload
    response = _upload(api, content)
    assert response.status_code == 422
    assert response.json()["code"] == "unsafe_checkpoint"
    assert "run code" in response.json()["detail"]
    assert not marker.exists()
    assert _stored_files(api) == []


def test_hidden_global_is_refused_and_never_run(api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    response = _upload(api, _torch_like_zip(_pop_trick_pickle(f"touch {marker}")))
    assert response.status_code == 422 and response.json()["code"] == "unsafe_checkpoint"
    assert "posix.system" in response.json()["detail"]
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(api: Api) -> None:
    truncated = _upload(api, safetensors_bytes()[:-10])
    assert truncated.status_code == 422 and truncated.json()["code"] == "invalid_upload"
    assert "truncated" in truncated.json()["detail"]
    half_zip = _upload(api, torch_state_dict_bytes()[:300])
    assert half_zip.status_code == 422 and half_zip.json()["code"] == "invalid_upload"
    text = _upload(api, b"hello, this is not a model at all")
    assert text.status_code == 422 and "neither safetensors" in text.json()["detail"]
    assert api.client.post("/v1/weights").status_code == 422  # no file field
    assert _stored_files(api) == []


def test_oversized_upload_is_413(api: Api) -> None:
    too_big = b"\0" * (api.settings.max_upload_bytes + 200 * 1024)
    response = _upload(api, too_big)
    assert response.status_code == 413
    assert "TOPIARY_MAX_UPLOAD_MB" in response.json()["detail"]
    assert _stored_files(api) == []


def test_static_scan_of_pickles() -> None:
    state = torch_state_dict_bytes()
    with zipfile.ZipFile(io.BytesIO(state)) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert scan_pickle(data) == len(_state_dict())
    parameters = io.BytesIO()
    torch.save({"w": torch.nn.Parameter(torch.ones(2)), "shape": torch.Size([2])}, parameters)
    with zipfile.ZipFile(parameters) as archive:
        assert scan_pickle(archive.read("archive/data.pkl")) == 1
    assert scan_pickle(pickle.dumps({"a": [1, 2, (3, "x")]}, protocol=4)) == 0
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        scan_pickle(pickle.dumps(eval, protocol=4))
    with pytest.raises(InvalidUploadError):
        scan_pickle(b"\x80\x02}q\x00(X")


def test_json_bodies_are_limited_whether_declared_or_streamed(api: Api) -> None:
    huge = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    declared = api.client.post("/v1/jobs", content=huge,
                               headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and declared.json()["code"] == "upload_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start:start + 64 * 1024]

    streamed = api.client.post("/v1/jobs", content=chunks(),
                               headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["code"] == "upload_too_large"
