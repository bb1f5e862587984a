"""The API as it is deployed (``topiary serve``, uvicorn in a process of its own), probed as
an attacker would: streams that hoard connections, a decompression bomb, bodies pushed
without a key, headers and bodies that never finish. Each must leave the server
answering everyone else, within its memory, and closing what it cannot use.
"""

from __future__ import annotations

import base64
import math
import re
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db import create_engine_for
from service.tenants import NewApiKey, create_api_key
from tests.service_tests.conftest import make_jobs
from tests.service_tests.test_upload_bounds import raw_zip
from tests.support import ServedApi, program_environment, served_api, wait_for

pytestmark = pytest.mark.slow
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
STREAMS_PER_KEY = 4
# bz2 of 300 MiB of zeros (bz2.BZ2Compressor(9) over 300 chunks of 1 MiB): 242 bytes.
BZ2_300_MIB = base64.b64decode(
    "QlpoOTFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJa"
    "kKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWp"
    "CoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQ"
    "qAlzFBWSZTWaJ1bucBLBJABMAAAAEACCAAMMwFKaYiBSNiRApHi7kinChIKup7h4A=")


@contextmanager
def serve(tmp_path: Path, database_url: str | None = None,
          **settings: Any) -> Iterator[ServedApi]:
    home = tmp_path / "home"
    environment = program_environment(home, database_url, **settings)
    with served_api(environment, tmp_path / "serve.log") as server:
        yield server


def _connect(server: ServedApi, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def _request(method: str, path: str, key: str | None, extra: str = "") -> bytes:
    authorization = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: test\r\n{authorization}{extra}\r\n").encode()


def _status(connection: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = connection.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {head!r}")
        head += chunk
    return int(head.split(b" ", 2)[1])


def _open_stream(server: ServedApi, key: str, job_id: str) -> tuple[socket.socket, int]:
    connection = _connect(server)
    connection.sendall(_request("GET", f"/v1/jobs/{job_id}/events", key))
    return connection, _status(connection)


def _closed_within(connection: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing the connection, which it must do in time."""
    connection.settimeout(seconds)
    received = b""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            chunk = connection.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"still open after {seconds} s (got {received[:200]!r})")


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def test_event_streams_leave_the_api_to_everyone_else(tmp_path: Path, migrated_url: str) -> None:
    """Three times the connection pool in open streams: another tenant still reads its job
    in under a second, and each key holds at most its share of streams."""
    engine = create_engine_for(migrated_url)
    pool = engine.pool
    pool_size = pool.size() + pool._max_overflow  # type: ignore[attr-defined]
    streams = 3 * pool_size
    keys: list[NewApiKey] = [create_api_key(engine, f"streamer-{index}")
                             for index in range(math.ceil(streams / STREAMS_PER_KEY))]
    followed = [make_jobs(engine, key.tenant.id, 1)[0] for key in keys]
    reader = create_api_key(engine, "reader")
    readers_job = make_jobs(engine, reader.tenant.id, 1)[0]
    engine.dispose()
    with serve(tmp_path, migrated_url, max_streams_per_key=STREAMS_PER_KEY) as server:
        opened = []
        try:
            # All at once: every stream's request is being served together.
            for index in range(streams):
                key, job_id = keys[index // STREAMS_PER_KEY], followed[index // STREAMS_PER_KEY]
                connection = _connect(server, timeout=60)
                connection.sendall(_request("GET", f"/v1/jobs/{job_id}/events", key.key))
                opened.append(connection)
            with httpx.Client(base_url=server.base_url, timeout=60, headers={
                    "Authorization": f"Bearer {reader.key}"}) as client:
                # While they open: answered (the pool once froze here for its 30 s timeout).
                started = time.monotonic()
                assert client.get(f"/v1/jobs/{readers_job}").status_code == 200
                assert time.monotonic() - started < 5.0, f"{streams} streams opening"
                assert [_status(c) for c in opened] == [200] * streams
                for _ in range(10):
                    started = time.monotonic()
                    response = client.get(f"/v1/jobs/{readers_job}")
                    assert response.status_code == 200, response.text
                    assert time.monotonic() - started < 1.0, f"{streams} streams open"
            # One stream more for a key that holds its share: refused, and says so.
            extra, status = _open_stream(server, keys[0].key, followed[0])
            extra.close()
            assert status == 429
            # Closing a key's streams gives its slots back.
            for connection in opened[:STREAMS_PER_KEY]:
                connection.close()

            def reopened() -> bool:
                connection, status = _open_stream(server, keys[0].key, followed[0])
                connection.close()
                return status == 200

            wait_for(reopened, 30, "a closed stream's slot to come back")
        finally:
            for connection in opened:
                connection.close()


def test_a_decompression_bomb_is_refused_and_the_server_barely_grows(tmp_path: Path) -> None:
    """On a server that made its home itself (SQLite): its files are private too."""
    bombs = {
        "bz2": raw_zip([("archive/data.pkl", BZ2_300_MIB, 12, 0, 1024)]),
        "nones": raw_zip([("archive/data.pkl", b"\x80\x02" + b"N" * 3_000_000 + b".", 0, 0,
                           3_000_002)]),
        "flat": raw_zip([("archive/data.pkl", b"\x80\x02" + b"N0" * 2_000_000 + b".", 0, 0,
                          4_000_003)]),
    }
    home = tmp_path / "home"
    with serve(tmp_path, max_upload_mb=16) as server, httpx.Client(
            base_url=server.base_url, timeout=60) as client:
        engine = create_engine_for(f"sqlite:///{home / 'topiary.db'}")
        client.headers["Authorization"] = f"Bearer {create_api_key(engine, 'acme').key}"
        engine.dispose()
        warm = client.post("/v1/weights", files={"file": ("w.pt", raw_zip(
            [("archive/data.pkl", b"\x80\x02}q\x00.", 0, 0, 7)]))})
        assert warm.status_code == 422  # every code path of an upload has run once
        before = _peak_rss_mib(server.process.pid)
        for name, content in bombs.items():
            started = time.monotonic()
            response = client.post("/v1/weights", files={"file": (f"{name}.pt", content)})
            assert response.status_code == 422, (name, response.text)
            assert time.monotonic() - started < 20, name
        grown = _peak_rss_mib(server.process.pid) - before
        assert grown < 64, f"the server's peak memory grew by {grown:.0f} MiB"
        assert client.get("/healthz").status_code == 200
    created = [home, *home.rglob("*")]
    assert home / "topiary.db" in created and home / "uploads" / "incoming" in created
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


@sqlite_only
def test_the_key_is_checked_before_the_body_is_read(tmp_path: Path, migrated_url: str) -> None:
    multipart = "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n"
    with serve(tmp_path, migrated_url, max_upload_mb=64) as server:
        for key in (None, "tpy_" + "x" * 43, "not-a-key"):
            connection = _connect(server, timeout=10)
            connection.sendall(_request("POST", "/v1/weights", key, multipart))
            # Not a byte of the 50 MB body was sent: the answer cannot have waited for it.
            assert _status(connection) == 401, key
            connection.close()
        declared = _connect(server)
        declared.sendall(_request("POST", "/v1/jobs", "tpy_" + "x" * 43,
                                  "Content-Type: application/json\r\nContent-Length: 10\r\n"))
        assert _status(declared) == 401
        declared.close()


@sqlite_only
def test_slow_or_unfinished_requests_are_cut_off(tmp_path: Path, migrated_url: str) -> None:
    engine = create_engine_for(migrated_url)
    key = create_api_key(engine, "acme").key
    engine.dispose()
    with serve(tmp_path, migrated_url, header_timeout_seconds=1,
               body_idle_timeout_seconds=1, keep_alive_seconds=1) as server:
        silent = _connect(server)  # connects, never sends a byte
        _closed_within(silent, 5)

        partial = _connect(server)
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        assert b" 408 " in _closed_within(partial, 5)

        trickle = _connect(server)  # a byte every 0.1 s: the deadline is for all of them
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 200:
                trickle.sendall(bytes([byte]))
                time.sleep(0.1)
        assert time.monotonic() - started < 5

        huge = _connect(server)
        huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 70_000)
        assert b" 431 " in _closed_within(huge, 5)

        stalled = _connect(server)
        stalled.sendall(_request("POST", "/v1/jobs", key,
                                 "Content-Type: application/json\r\nContent-Length: 100\r\n")
                        + b'{"name": ')
        answer = _closed_within(stalled, 5)
        assert b" 408 " in answer and b"request_timeout" in answer

        idle = _connect(server)
        idle.sendall(_request("GET", "/healthz", None))
        assert b" 200 " in _closed_within(idle, 5)  # answered, then closed when idle
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
