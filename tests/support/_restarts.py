"""Stopping and restarting the local PostgreSQL server (``pg_ctlcluster``), for fault tests.

Every client of the server loses its connections, other test runs included: the tests
that do it run alone (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support._postgres import postgres_answers
from tests.support._waiting import wait_for


def postgres_restart_unavailable(admin_url: str) -> str | None:
    """Why this process cannot restart the PostgreSQL server (None: it can)."""
    if shutil.which("pg_ctlcluster") is None:
        return "pg_ctlcluster is not installed"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    if make_url(admin_url).host not in {"127.0.0.1", "localhost", "::1", None}:
        return f"PostgreSQL at {make_url(admin_url).host} is not on this machine"
    if not _local_cluster():
        return "no cluster under /etc/postgresql"
    return None


def _local_cluster() -> tuple[str, str] | None:
    base = Path("/etc/postgresql")
    versions = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    return (versions[-1], "main") if versions else None


def _pg_ctlcluster(action: str) -> subprocess.CompletedProcess[str]:
    cluster = _local_cluster()
    assert cluster is not None
    return subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action],
                          capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def postgres_stopped(admin_url: str) -> Iterator[None]:
    """Stop the server for the duration of the block; it is started again whatever happens."""
    try:
        stopped = _pg_ctlcluster("stop")
        assert stopped.returncode == 0, stopped.stderr
        yield
    finally:
        ensure_postgres_running(admin_url)


def restart_postgres(admin_url: str, down_seconds: float = 0.0) -> None:
    """``pg_ctlcluster ... restart`` (or stop, wait ``down_seconds``, start): every
    connection of every client is cut. The server is running again on return."""
    if down_seconds <= 0:
        try:
            restarted = _pg_ctlcluster("restart")
            assert restarted.returncode == 0, restarted.stderr
        finally:
            ensure_postgres_running(admin_url)
        return
    with postgres_stopped(admin_url):
        time.sleep(down_seconds)


def ensure_postgres_running(admin_url: str, timeout: float = 60) -> None:
    """Start the server if it is down and wait until it answers."""
    if not postgres_answers(admin_url, timeout=2):
        _pg_ctlcluster("start")
    wait_for(lambda: postgres_answers(admin_url, timeout=2), timeout, "PostgreSQL to answer",
             interval=0.5)
