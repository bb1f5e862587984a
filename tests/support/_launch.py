"""Starting our programs as tests and benchmarks do: ``topiary serve`` (ready once
``/readyz`` answers 200) and ``python -m workers``, through :mod:`cli.processes`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli.processes import ChildProcess, free_port, start_child

REPOSITORY = Path(__file__).resolve().parents[2]


def program_environment(home: Path, database_url: str | None = None,
                        optuna_url: str | None = None, **settings: Any) -> dict[str, str]:
    """Our environment plus the repository on ``PYTHONPATH``, one torch thread, and
    ``TOPIARY_*`` settings: the home folder, the databases, and any ``name=value``
    given as ``TOPIARY_NAME``."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1", "TOPIARY_HOME": str(home)}
    named = {"database_url": database_url, "optuna_url": optuna_url, **settings}
    environment.update({f"TOPIARY_{name.upper()}": str(value)
                        for name, value in named.items() if value is not None})
    return environment


def topiary_command(*arguments: str) -> list[str]:
    """``topiary ARGUMENTS`` run by this Python (no installed script needed)."""
    return [sys.executable, "-m", "cli.main", *arguments]


def worker_command(*arguments: str) -> list[str]:
    """A worker on one CPU thread (``python -m workers``), with extra ``arguments``."""
    return [sys.executable, "-m", "workers", "--device", "cpu", "--threads", "1", *arguments]


def start_worker(environment: Mapping[str, str], log_path: Path,
                 *arguments: str) -> ChildProcess:
    """Start :func:`worker_command` in the repository, its output in ``log_path``."""
    return start_child("worker", worker_command(*arguments), environment=environment,
                       log_path=log_path, cwd=REPOSITORY)


@dataclass
class ServedApi:
    """A live ``topiary serve`` on a loopback port."""

    process: ChildProcess
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def answers_readyz(base_url: str) -> bool:
    """Whether ``GET /readyz`` answers 200 (False while nobody listens)."""
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def start_api(environment: Mapping[str, str], log_path: Path, *, port: int | None = None,
              arguments: Sequence[str] = (), ready_timeout: float = 90) -> ServedApi:
    """Start ``topiary serve --port PORT ARGUMENTS`` and wait until ``/readyz`` answers 200.

    Raises:
        cli.processes.ChildExited: the server exited first.
        TimeoutError: it did not answer within ``ready_timeout`` seconds (it is killed).
    """
    port = port or free_port()
    process = start_child("api", topiary_command("serve", "--port", str(port), *arguments),
                          environment=environment, log_path=log_path, cwd=REPOSITORY)
    api = ServedApi(process, port)
    try:
        process.wait_until(lambda: answers_readyz(api.base_url), ready_timeout,
                           "answer /readyz", interval=0.3)
    except BaseException:
        process.kill()
        raise
    return api


@contextmanager
def served_api(environment: Mapping[str, str], log_path: Path, *,
               arguments: Sequence[str] = (), ready_timeout: float = 90,
               stop_timeout: float = 30) -> Iterator[ServedApi]:
    """:func:`start_api`, stopped (SIGTERM, then SIGKILL) on exit."""
    api = start_api(environment, log_path, arguments=arguments, ready_timeout=ready_timeout)
    try:
        yield api
    finally:
        api.process.stop(stop_timeout)
