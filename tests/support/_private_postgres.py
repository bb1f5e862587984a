"""A PostgreSQL server of a test's own, for the tests that stop and restart it.

``initdb`` in a temporary folder, started with ``pg_ctl`` on a free loopback port:
stopping it cuts every connection of the processes under test, and nobody else's
(the shared server of ``TOPIARY_TEST_POSTGRES_URL`` serves other tests meanwhile,
other test runs too). As root, the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.processes import free_port
from tests.support._postgres import postgres_answers
from tests.support._waiting import wait_for

SERVER_USER = "postgres"


def _bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: on PATH, or Debian's newest version folder."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda path: int(Path(path).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def private_postgres_unavailable() -> str | None:
    """Why :func:`private_postgres` cannot run here (None: it can)."""
    if _bindir() is None:
        return "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"PostgreSQL refuses to run as root and there is no {SERVER_USER} user"
    return None


class PrivatePostgres:
    """A running server of our own; :meth:`stop`, :meth:`start`, :meth:`restart` it at will.

    Attributes:
        admin_url: the URL of its ``postgres`` database, as the ``postgres`` superuser.
    """

    def __init__(self, bindir: Path, folder: Path, port: int) -> None:
        self._bindir = bindir
        self._folder = folder
        self.port = port
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(self._bindir / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"

    def _pg_ctl(self, action: str, *arguments: str) -> None:
        self._run("pg_ctl", action, "--pgdata", str(self._folder / "data"), "--wait",
                  "--log", str(self._folder / "server.log"), *arguments)

    def initialise(self) -> None:
        self._run("initdb", "--pgdata", str(self._folder / "data"), "--auth", "trust",
                  "--username", "postgres", "--no-sync", "--encoding", "UTF8")

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self._pg_ctl("start", "--options",
                     f"-p {self.port} -k {self._folder} -c listen_addresses=127.0.0.1 "
                     "-c fsync=off -c max_connections=200")
        wait_for(lambda: postgres_answers(self.admin_url, timeout=2), 60,
                 "the private PostgreSQL server to answer", interval=0.2)

    def stop(self) -> None:
        """Stop the server (fast shutdown: every connection is cut)."""
        self._pg_ctl("stop", "--mode", "fast")

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Stopped for the duration of the block; started again whatever happens."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop, wait ``down_seconds``, start: every connection of every client is cut."""
        with self.stopped():
            time.sleep(down_seconds)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A new server of our own, running; stopped and deleted on exit.

    Raises:
        RuntimeError: see :func:`private_postgres_unavailable`.
    """
    reason = private_postgres_unavailable()
    bindir = _bindir()
    if reason or bindir is None:
        raise RuntimeError(reason)
    folder = Path(tempfile.mkdtemp(prefix="topiary-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, SERVER_USER)
    server = PrivatePostgres(bindir, folder, free_port())
    try:
        server.initialise()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except AssertionError:
            pass  # it was not running
        shutil.rmtree(folder, ignore_errors=True)
