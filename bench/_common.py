"""What the benchmarks share: throwaway PostgreSQL databases, a served API and workers
(the tests' harness, :mod:`tests.support`), and CPU accounting (the machine's and one
process's) read from ``/proc``.

Not a module of the product: benchmarks run from a checkout
(``.venv/bin/python bench/<name>.py``) and print tables.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tests.support as support  # the harness the tests use (the arrow is bench -> tests)

REPOSITORY = support.REPOSITORY
POSTGRES_ADMIN_URL = support.admin_url()
_TICKS = os.sysconf("SC_CLK_TCK")
_TERMINAL = ("succeeded", "failed", "cancelled")
T = TypeVar("T")


def postgres_answers(url: str = POSTGRES_ADMIN_URL) -> bool:
    """Whether a PostgreSQL server answers at ``url``."""
    return support.postgres_answers(url)


def postgres_database(prefix: str = "topiary_bench") -> AbstractContextManager[str]:
    """A fresh, empty database on the admin server; dropped (connections and all) on exit,
    waiting out a server restart (other people's tests restart it)."""
    return support.throwaway_database(POSTGRES_ADMIN_URL, prefix)


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


@contextmanager
def api_server(environment: dict[str, str], log_path: Path, startup_seconds: float = 60.0,
               arguments: Sequence[str] = ()) -> Iterator[tuple[int, int]]:
    """``python -m cli.main serve`` on a free loopback port, ready (``/readyz``) on yield.

    Args:
        environment: the server's environment (``TOPIARY_*`` settings).
        log_path: where its output goes.
        startup_seconds: how long it may take to answer.
        arguments: more arguments of ``serve`` (``--processes 2``).

    Yields:
        (port, the server's process id).
    """
    with support.served_api(environment, log_path, arguments=arguments,
                            ready_timeout=startup_seconds) as api:
        yield api.port, api.process.pid


@dataclass
class Deployment:
    """One throwaway service: home folder, our PostgreSQL database and Optuna's."""

    home: Path
    database_url: str
    optuna_url: str

    def environment(self) -> dict[str, str]:
        return support.program_environment(self.home, self.database_url, self.optuna_url,
                                           log_level="WARNING")


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

    Every process a benchmark starts gets its own session (:mod:`cli.processes`): with
    Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) CPU is
    shared between sessions first, so two workers in one session would get no more CPU
    than one whenever other sessions keep the cores busy.
    """

    def __init__(self, target: Deployment, name: str, profile: Path | None = None) -> None:
        self.log_path = target.home / f"{name}.log"
        command = support.worker_command()
        if profile:
            command[1:1] = ["-m", "cProfile", "-o", str(profile)]
        self.child = support.start_child(name, command, environment=target.environment(),
                                         log_path=self.log_path, cwd=REPOSITORY)
        self.process = self.child.popen

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.child.stop(timeout=120)


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
