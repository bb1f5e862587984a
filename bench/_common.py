"""What the benchmarks share: throwaway PostgreSQL databases, a served API, and
CPU accounting (the machine's and one process's) read from ``/proc``.

Not a module of the product: benchmarks run from a checkout
(``.venv/bin/python bench/<name>.py``) and print tables.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPOSITORY = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("TOPIARY_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_TICKS = os.sysconf("SC_CLK_TCK")
_TERMINAL = ("succeeded", "failed", "cancelled")
T = TypeVar("T")


def postgres_answers(url: str = POSTGRES_ADMIN_URL) -> bool:
    """Whether a PostgreSQL server answers at ``url``."""
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "no server"
        return False
    finally:
        engine.dispose()


@contextmanager
def postgres_database(prefix: str = "topiary_bench") -> Iterator[str]:
    """A fresh, empty database on the admin server; dropped (connections and all) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        _drop(admin, name)


def _drop(admin: Any, name: str, attempts: int = 10) -> None:
    """Drop a database, waiting out a server restart (other people's tests restart it)."""
    for attempt in range(attempts):
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            break
        except Exception as error:  # noqa: BLE001 - retried, then reported
            if attempt == attempts - 1:
                print(f"could not drop database {name}: {error}", file=sys.stderr)
            time.sleep(3)
    admin.dispose()


def retried(action: Callable[[], T], what: str, attempts: int = 3) -> tuple[T, int]:
    """Run ``action``; when it raises (a PostgreSQL restart, a worker that died), wait
    for the server and run it again.

    Returns:
        its result and how many attempts failed first.

    Raises:
        RuntimeError: every attempt failed.
    """
    for attempt in range(attempts):
        try:
            return action(), attempt
        except Exception as error:  # noqa: BLE001 - retried, then raised
            print(f"{what} failed ({type(error).__name__}: {str(error)[:200]}); "
                  "retrying", file=sys.stderr)
            deadline = time.monotonic() + 120
            while not postgres_answers() and time.monotonic() < deadline:
                time.sleep(2)
    raise RuntimeError(f"{what} failed {attempts} times; see the messages above")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def api_server(environment: dict[str, str], log_path: Path,
               startup_seconds: float = 60.0) -> Iterator[tuple[int, int]]:
    """``python -m cli.main serve`` on a free loopback port, ready (``/readyz``) on yield.

    Args:
        environment: the server's environment (``TOPIARY_*`` settings).
        log_path: where its output goes.
        startup_seconds: how long it may take to answer.

    Yields:
        (port, the server's process id).
    """
    port = free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port",
                                   str(port)], cwd=REPOSITORY, env=environment,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_seconds
            while not _answers(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the API server did not start; see {log_path}")
                time.sleep(0.2)
            yield port, server.pid
        finally:
            server.terminate()
            server.wait(timeout=30)


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False


@dataclass
class Deployment:
    """One throwaway service: home folder, our PostgreSQL database and Optuna's."""

    home: Path
    database_url: str
    optuna_url: str

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "TOPIARY_HOME": str(self.home),
                "TOPIARY_DATABASE_URL": self.database_url,
                "TOPIARY_OPTUNA_URL": self.optuna_url, "TOPIARY_LOG_LEVEL": "WARNING"}


@contextmanager
def deployment() -> Iterator[Deployment]:
    """A fresh home folder and two fresh PostgreSQL databases (ours migrated)."""
    from service.db import migrate

    with tempfile.TemporaryDirectory(prefix="topiary-bench-") as folder, \
            postgres_database("topiary_bw") as ours, postgres_database("topiary_bwopt") as theirs:
        migrate(ours)
        yield Deployment(Path(folder), ours, theirs)


class WorkerProcess:
    """``python -m workers --device cpu --threads 1``, optionally under cProfile.

    Every process a benchmark starts gets its own session: with Linux's
    autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) CPU is
    shared between sessions first, so two workers in one session would get no
    more CPU than one whenever other sessions keep the cores busy.
    """

    def __init__(self, target: Deployment, name: str, profile: Path | None = None) -> None:
        self.log_path = target.home / f"{name}.log"
        runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, *runner, "-m", "workers", "--device", "cpu", "--threads", "1"],
                cwd=REPOSITORY, env=target.environment(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Watch:
    """CPU samples taken while waiting: (time, machine busy s, watched processes' CPU s).

    Attributes:
        pids: the processes counted as ours (workers, the API server, a script).
    """

    pids: list[int]
    samples: list[tuple[float, float, float]] = field(default_factory=list)

    def sample(self) -> None:
        cpu = [process_cpu_seconds(pid) for pid in self.pids]
        alive = [value for value in cpu if value is not None]
        if len(alive) == len(cpu):
            self.samples.append((time.time(), machine_busy_seconds(), sum(alive)))

    def cores(self, start: float = 0.0, end: float = float("inf")) -> tuple[float, float]:
        """(cores our processes used, cores the rest of the machine used) in [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan")
        (t0, busy0, ours0), (t1, busy1, ours1) = inside[0], inside[-1]
        ours = (ours1 - ours0) / (t1 - t0)
        return ours, (busy1 - busy0) / (t1 - t0) - ours


def wait_until_terminal(read_status: Callable[[], str], workers: list[WorkerProcess],
                        watch: Watch, timeout: float = 3600.0, period: float = 0.2) -> str:
    """Poll a job's status (sampling CPU as it goes) until it ends; returns that status.

    Raises:
        RuntimeError: a worker exited first, or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch.sample()
        status = read_status()
        if status in _TERMINAL:
            return status
        if any(worker.process.poll() is not None for worker in workers):
            raise RuntimeError(f"a worker exited early; see {workers[0].log_path.parent}")
        time.sleep(period)
    raise RuntimeError(f"the job did not end within {timeout:.0f} s")


def study_trials(optuna_url: str, study_name: str) -> list[Any]:
    """Every trial (``FrozenTrial``) of one Optuna study."""
    import optuna

    from search.storage import open_storage

    storage = open_storage(optuna_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``: user, nice,
    system, irq, softirq; idle, iowait and hypervisor steal excluded); its growth
    over a wall interval is the cores in use."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one live process (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(after_name[11]) + int(after_name[12])) / _TICKS


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def median(values: Iterable[float]) -> float:
    listed = [value for value in values if value is not None]
    return statistics.median(listed) if listed else float("nan")
