"""A checkpoint download is always a whole file: writers rename, readers never see a part.

Workers write every artifact through ``models.checkpoints.atomic_destination``
(a temporary ``.<name>.*.partial`` beside the target, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from models.checkpoints import atomic_destination
from service.jobs import record_artifact
from tests.support import REPOSITORY, spec_json, wait_for
from tests.support.fixtures import Api

SIZE = 4 * 1024 * 1024
# Files, not the database, are under test here: the embedded backend is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _write(path: Path, content: bytes) -> None:
    with atomic_destination(path) as temporary:
        temporary.write_bytes(content)


def _published(api: Api, path: Path, content: bytes) -> str:
    job_id = api.client.post("/v1/jobs", json=spec_json()).json()["id"]
    _write(path, content)
    record_artifact(api.engine, job_id, "safetensors", str(path), len(content),
                    hashlib.sha256(content).hexdigest())
    return job_id


def test_a_writer_killed_mid_write_leaves_the_served_file_whole(api: Api, tmp_path: Path) -> None:
    assert api.settings.artifact_dir is not None
    path = api.settings.artifact_dir / "job" / "pruned.safetensors"
    old = os.urandom(SIZE)
    job_id = _published(api, path, old)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from models.checkpoints import atomic_destination
        with atomic_destination({str(path)!r}) as temporary:
            with temporary.open("wb") as out:
                out.write(b"new" * 100_000)
                out.flush()
                time.sleep(600)
        """)], cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    try:
        partial = wait_for(lambda: [p for p in path.parent.glob(".*.partial")
                                    if p.stat().st_size > 0], 60, "the writer to start")
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    finally:
        writer.kill()
    response = api.client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert response.status_code == 200 and response.content == old
    assert partial[0].exists()  # the half-written file is left aside, never served
    assert path.read_bytes() == old


def test_downloads_during_replacements_are_one_version_or_the_other(api: Api) -> None:
    assert api.settings.artifact_dir is not None
    path = api.settings.artifact_dir / "job" / "pruned.safetensors"
    versions = [os.urandom(SIZE), os.urandom(SIZE)]
    job_id = _published(api, path, versions[0])
    stop = threading.Event()

    def keep_replacing() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            _write(path, versions[index % 2])

    writer = threading.Thread(target=keep_replacing, daemon=True)
    writer.start()
    bodies = []
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline or len(bodies) < 10:
            response = api.client.get(f"/v1/jobs/{job_id}/checkpoint")
            assert response.status_code == 200
            bodies.append(response.content)
    finally:
        stop.set()
        writer.join()
    assert all(body in versions for body in bodies), "a download mixed or cut two versions"
