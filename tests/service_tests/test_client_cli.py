"""The Python client and the ``topiary`` user commands against a real API (uvicorn in a thread).

SQLite in a temporary folder, API keys on, a real worker process for the end-to-end test.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
import yaml
from safetensors.numpy import save_file
from typer.testing import CliRunner

from cli.client import ClientError, TopiaryClient
from cli.main import app
from service.api.app import create_app
from service.config import Settings
from service.db import create_engine_for, migrate
from service.jobs import record_artifact
from service.tenants import create_api_key
from tests.support import (
    REPOSITORY,
    ChildProcess,
    free_port,
    program_environment,
    start_child,
    topiary_command,
)
from tests.support import tiny_spec as support_tiny_spec


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A job that runs in seconds: ResNet-20 on 16x16 digits, three trials."""
    return support_tiny_spec(**{"name": "cli-test", "search": {"n_trials": 3},
                                "fine_tune": {"trial_epochs": 0, "baseline_epochs": 1},
                                **overrides})


@dataclass
class LiveApi:
    url: str
    key: str
    settings: Settings

    def client(self, **kwargs: Any) -> TopiaryClient:
        return TopiaryClient(self.url, key=kwargs.pop("key", self.key), **kwargs)

    def environment(self) -> dict[str, str]:
        return {"TOPIARY_SERVER": self.url, "TOPIARY_KEY": self.key}


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """A real uvicorn server on a free port, SQLite files in a temporary home."""
    home = tmp_path_factory.mktemp("client-home")
    settings = Settings(home=home, auth="key", max_concurrent_jobs_per_tenant=50)
    settings.ensure_directories()
    migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    key = create_api_key(engine, "acme").key
    engine.dispose()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield LiveApi(url=f"http://127.0.0.1:{port}", key=key, settings=settings)
    server.should_exit = True
    thread.join(timeout=10)


def invoke(live_api: LiveApi, *arguments: str, **env: str):
    result = CliRunner().invoke(app, list(arguments), env={**live_api.environment(), **env})
    assert "Traceback" not in result.output, result.output
    return result


def one_red_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines
    return lines[0]


# -- the client ------------------------------------------------------------------------


def test_client_submits_reads_lists_and_cancels(live_api: LiveApi) -> None:
    with live_api.client() as client:
        job = client.submit(tiny_spec(name="client-roundtrip"))
        assert job["status"] == "queued" and job["spec"]["search"]["n_trials"] == 3
        assert client.get(job["id"])["name"] == "client-roundtrip"
        queued = client.list(status="queued")["data"]
        assert job["id"] in [row["id"] for row in queued]
        assert client.trials(job["id"]) == [] and client.pareto(job["id"]) == []
        cancelled = client.cancel(job["id"])
        assert cancelled["status"] == "cancelled"
        seen: list[str] = []
        final = client.wait(job["id"], poll=0.1, on_update=lambda j: seen.append(j["status"]))
        assert final["status"] == seen[-1] == "cancelled"
        assert [event["kind"] for event in client.events(job["id"])][-1] == "status"
        assert job["id"] not in [row["id"] for row in client.list_jobs(status="queued")["data"]]


def test_client_errors_carry_the_servers_reason(live_api: LiveApi, tmp_path: Path) -> None:
    with live_api.client() as client:
        with pytest.raises(ClientError) as refused:
            client.submit(tiny_spec(search={"n_trials": 0, "sampler": "annealing"}))
        assert refused.value.status_code == 422 and refused.value.code == "invalid_request"
        assert "search.n_trials" in str(refused.value) and "search.sampler" in str(refused.value)
        with pytest.raises(ClientError, match="not found") as missing:
            client.get("0" * 32)
        assert missing.value.status_code == 404
        waiting = client.submit(tiny_spec(name="never-runs"))
        with pytest.raises(ClientError, match="still queued"):
            client.wait(waiting["id"], poll=0.05, timeout=0.2)
        client.cancel(waiting["id"])
    with live_api.client(key="") as anonymous, pytest.raises(ClientError, match="TOPIARY_KEY"):
        anonymous.list()
    with TopiaryClient(f"http://127.0.0.1:{free_port()}", timeout=2) as nowhere:
        with pytest.raises(ClientError, match="cannot reach") as unreachable:
            nowhere.get("0" * 32)
        assert unreachable.value.code == "unreachable" and not nowhere.ready()


def test_client_reads_yaml_specs_and_refuses_bad_files(live_api: LiveApi, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(name="from-yaml")))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: {arch: cifar_resnet20\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with live_api.client() as client:
        job = client.submit(spec_path)
        assert job["name"] == "from-yaml"
        client.cancel(job["id"])
        with pytest.raises(ClientError, match="does not exist"):
            client.submit(tmp_path / "missing.yaml")
        with pytest.raises(ClientError, match="not valid YAML at line 3"):
            client.submit(broken)
        with pytest.raises(ClientError, match="must hold a mapping"):
            client.submit(listing)


def test_download_verifies_the_sha256_and_keeps_nothing_on_mismatch(live_api: LiveApi,
                                                                     tmp_path: Path) -> None:
    with live_api.client() as client:
        job = client.submit(tiny_spec(name="artifact"))
        client.cancel(job["id"])
        stored = live_api.settings.artifact_dir / f"{job['id']}.onnx"
        stored.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        digest = hashlib.sha256(stored.read_bytes()).hexdigest()
        engine = create_engine_for(live_api.settings.database_url)
        record_artifact(engine, job["id"], "onnx", str(stored), stored.stat().st_size, digest)
        engine.dispose()

        folder = tmp_path / "downloads"
        folder.mkdir()
        path = client.download(job["id"], "onnx", folder)
        assert path == folder / "artifact.onnx" and path.read_bytes() == stored.read_bytes()
        # A path ending in a separator is a folder, made when missing (README's `-o exports/`).
        path = client.download(job["id"], "onnx", f"{tmp_path}/new/exports/")
        assert path == tmp_path / "new" / "exports" / "artifact.onnx" and path.is_file()

        stored.write_bytes(b"tampered after the digest was recorded")
        target = tmp_path / "tampered.onnx"
        with pytest.raises(ClientError, match="does not match") as mismatch:
            client.download(job["id"], "onnx", target)
        assert mismatch.value.code == "checksum_mismatch"
        assert not target.exists() and list(tmp_path.glob(".tampered*")) == []
        with pytest.raises(ClientError, match="no safetensors checkpoint"):
            client.download(job["id"], "safetensors", tmp_path / "x.safetensors")


def test_upload_weights_returns_an_id(live_api: LiveApi, tmp_path: Path) -> None:
    weights = tmp_path / "start.safetensors"
    save_file({"conv.weight": np.zeros((4, 3, 3, 3), dtype=np.float32)}, str(weights))
    with live_api.client() as client:
        upload = client.upload_weights(weights)
        assert upload["format"] == "safetensors" and upload["tensor_count"] == 1
        with pytest.raises(ClientError, match="does not exist"):
            client.upload_weights(tmp_path / "missing.safetensors")


def test_cli_upload_prints_the_id_a_spec_starts_from(live_api: LiveApi, tmp_path: Path) -> None:
    weights = tmp_path / "trained.safetensors"
    save_file({"conv.weight": np.ones((4, 3, 3, 3), dtype=np.float32)}, str(weights))
    uploaded = invoke(live_api, "upload", str(weights))
    assert uploaded.exit_code == 0, uploaded.output
    upload_id = uploaded.stdout.strip()
    assert f"model: {{weights: {upload_id}}}" in uploaded.stderr
    with live_api.client() as client:
        job = client.submit(tiny_spec(model={"arch": "cifar_resnet20", "weights": upload_id}))
    assert job["spec"]["model"]["weights"] == upload_id

    missing = invoke(live_api, "upload", str(tmp_path / "nope.safetensors"))
    assert missing.exit_code == 2 and "does not exist" in one_red_line(missing)
    not_weights = tmp_path / "notes.safetensors"
    not_weights.write_text("not a tensor file")
    refused = invoke(live_api, "upload", str(not_weights))
    assert refused.exit_code == 1 and one_red_line(refused)


# -- the CLI: bad input is one red line, never a traceback --------------------------------


def test_cli_bad_input_is_one_line_and_a_nonzero_status(live_api: LiveApi,
                                                        tmp_path: Path) -> None:
    missing = invoke(live_api, "submit", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "does not exist" in one_red_line(missing)

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    invalid = invoke(live_api, "submit", str(broken))
    assert invalid.exit_code == 2 and "not valid YAML" in one_red_line(invalid)

    bad_fields = tmp_path / "bad.yaml"
    bad_fields.write_text(yaml.safe_dump(tiny_spec(model={"arch": "resnet9000"})))
    refused = invoke(live_api, "submit", str(bad_fields))
    assert refused.exit_code == 1 and "model.arch" in one_red_line(refused)

    unknown = invoke(live_api, "status", "0" * 32)
    assert unknown.exit_code == 1 and "not found" in one_red_line(unknown)

    no_key = invoke(live_api, "trials", "0" * 32, TOPIARY_KEY="")
    assert no_key.exit_code == 1 and "TOPIARY_KEY" in one_red_line(no_key)

    nowhere = invoke(live_api, "cancel", "0" * 32,
                     TOPIARY_SERVER=f"http://127.0.0.1:{free_port()}")
    assert nowhere.exit_code == 1 and "cannot reach" in one_red_line(nowhere)


def test_cli_submit_status_cancel_download_of_a_queued_job(live_api: LiveApi,
                                                           tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(name="queued-one")))
    submitted = invoke(live_api, "submit", str(spec))
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert len(job_id) == 32 and "queued" in submitted.stderr

    shown = invoke(live_api, "status", job_id)
    assert shown.exit_code == 0 and "queued-one" in shown.stdout and "queued" in shown.stdout
    no_checkpoint = invoke(live_api, "download", job_id, "-o", str(tmp_path / "x"))
    assert no_checkpoint.exit_code == 1 and "checkpoint" in one_red_line(no_checkpoint)

    cancelled = invoke(live_api, "cancel", job_id)
    assert cancelled.exit_code == 0 and f"job {job_id} cancelled" in cancelled.stdout
    watched = invoke(live_api, "status", job_id, "--watch", "--poll", "0.1")
    assert watched.exit_code == 1 and "was cancelled" in one_red_line(watched)


# -- end to end with a real worker process ----------------------------------------------


@pytest.fixture
def worker_process(live_api: LiveApi, tmp_path: Path) -> Iterator[ChildProcess]:
    settings = live_api.settings
    environment = program_environment(settings.home, settings.database_url,
                                      settings.optuna_url)
    process = start_child("worker", topiary_command("worker", "--device", "cpu", "--threads",
                                                    "1"),
                          environment=environment, log_path=tmp_path / "worker.log",
                          cwd=REPOSITORY)
    yield process
    assert process.stop(60) == 0, process.log_tail(60)


@pytest.mark.slow
def test_cli_runs_a_real_job_end_to_end(live_api: LiveApi, worker_process, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(name="end-to-end")))
    watched = invoke(live_api, "submit", str(spec), "--watch", "--poll", "0.5")
    assert watched.exit_code == 0, watched.output
    job_id = watched.stdout.splitlines()[0].strip()
    for phase in ("preparing", "searching", "finalizing", "succeeded"):
        assert phase in watched.stdout
    assert "trials 3/3" in watched.stdout and "sha256" in watched.stdout
    # the delivered network's held-out test accuracy beside the unpruned one's
    assert re.search(r"accuracy \(test\)\s.*\d %.*\d %.*pts", watched.stdout), watched.stdout

    checkpoint = tmp_path / "pruned.safetensors"
    downloaded = invoke(live_api, "download", job_id, "-o", str(checkpoint))
    assert downloaded.exit_code == 0 and "sha256 verified" in downloaded.stderr
    with live_api.client() as client:
        job = client.get(job_id)
    artifact = {a["format"]: a for a in job["artifacts"]}["safetensors"]
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == artifact["sha256"]

    import torch

    from models.export import load_pruned

    model = load_pruned(checkpoint)
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert model.topiary_metadata["plan"] == job["best"]["plan"]

    listed = invoke(live_api, "trials", job_id)
    assert listed.exit_code == 0
    rows = [line.split() for line in listed.stdout.splitlines() if line.strip()[:1].isdigit()]
    finished = [row for row in rows if row[1] in ("complete", "infeasible", "pruned")]
    assert len(finished) == 3, listed.stdout
    onnx = invoke(live_api, "download", job_id, "--format", "onnx", "-o", f"{tmp_path}/exports/")
    assert onnx.exit_code == 0 and (tmp_path / "exports" / "end-to-end.onnx").stat().st_size > 0


def test_cli_client_and_demo_modules_import_without_torch() -> None:
    code = ("import sys; import cli.main, cli.client, cli.demo; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert result.returncode == 0, result.stderr
