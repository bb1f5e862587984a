"""Real processes against throwaway PostgreSQL databases: workers, the API, and their faults.

Shared by the reliability tests and ``bench/chaos.py``. A :class:`Cluster` owns
two fresh databases (ours, migrated, and Optuna's), a home folder, and every
process it started; :func:`inspect_job` checks the invariants a job must keep
whatever was killed on the way (terminal, exactly ``n_trials`` finished trials,
none counted twice, one checkpoint per kind whose bytes match their digest).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, select

from core.spec import JobSpec
from search.budget import is_surplus
from search.storage import open_storage
from service.config import Settings
from service.db import create_engine_for, migrate, session_scope
from service.jobs import JobStatus, get_job, submit_job
from service.tables import Artifact, Job
from service.tables import Worker as WorkerRow
from service.tenants import create_api_key
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.workers_tests.conftest import tiny_spec as worker_tiny_spec

ROOT = Path(__file__).resolve().parents[2]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CHECKPOINT_KINDS = ("onnx", "safetensors", "torchscript")


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A job of a minute or so: the workers' tiny spec, named ``chaos``, FLOPs capped at 60%."""
    return worker_tiny_spec(**{"name": "chaos",
                               "objective": {"constraints": {"max_flops_ratio": 0.6}},
                               **overrides})


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; that value is returned.

    Raises:
        AssertionError: ``timeout`` seconds passed first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would; no handler runs."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit status."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.popen.returncode)

    def output(self, last: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-last:]


@dataclass
class Api:
    """A live ``topiary serve`` (uvicorn) and an authenticated client for it."""

    process: Process
    port: int
    key: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout,
                            headers={"Authorization": f"Bearer {key or self.key}"})


@dataclass
class Cluster:
    """Two throwaway PostgreSQL databases, a home folder, and the processes using them.

    Attributes:
        settings: what every process is configured with (through ``TOPIARY_*``).
        engine: our database, for the test's own reads and submissions.
        tenant_id: the tenant whose API key ``api_key`` is.
        processes: every process started, oldest first.
    """

    admin_url: str
    settings: Settings
    engine: Engine
    tenant_id: int
    api_key: str
    processes: list[Process] = field(default_factory=list)
    _storage: RDBStorage | None = None
    _storage_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    @contextmanager
    def create(cls, admin_url: str, home: Path, *, lease_seconds: float = 4,
               max_attempts: int = 6, **extra: Any) -> Iterator[Cluster]:
        """A cluster whose processes are all killed, and databases dropped, on exit."""
        ours = create_postgres_database(admin_url, "topiary_rel")
        theirs = create_postgres_database(admin_url, "topiary_relopt")
        cluster = None
        try:
            migrate(ours)
            # Optuna creates its tables on first use; doing it now, while the first
            # worker is still importing torch, saves that worker seconds.
            open_storage(theirs).engine.dispose()
            settings = Settings(home=home, database_url=ours, optuna_url=theirs,
                                lease_seconds=lease_seconds, max_attempts=max_attempts,
                                max_concurrent_jobs_per_tenant=1000, **extra)
            settings.ensure_directories()
            engine = create_engine_for(ours)
            key = create_api_key(engine, "chaos")
            cluster = cls(admin_url, settings, engine, key.tenant.id, key.key)
            yield cluster
        finally:
            if cluster is not None:
                cluster.close()
            for url in (ours, theirs):
                drop_postgres_database(admin_url, url)

    def environment(self) -> dict[str, str]:
        settings = self.settings
        return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                "TOPIARY_HOME": str(settings.home), "TOPIARY_DATABASE_URL": settings.database_url,
                "TOPIARY_OPTUNA_URL": settings.optuna_url,
                "TOPIARY_LEASE_SECONDS": str(settings.lease_seconds),
                "TOPIARY_MAX_ATTEMPTS": str(settings.max_attempts),
                "TOPIARY_MAX_UPLOAD_MB": str(settings.max_upload_mb),
                "TOPIARY_MAX_CONCURRENT_JOBS_PER_TENANT":
                    str(settings.max_concurrent_jobs_per_tenant)}

    def _start(self, name: str, command: list[str]) -> Process:
        log = self.settings.home / f"{name}-{len(self.processes)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(command, cwd=ROOT, env=self.environment(), stdout=out,
                                     stderr=subprocess.STDOUT)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_worker(self) -> Process:
        return self._start("worker", [sys.executable, "-m", "workers", "--device", "cpu",
                                      "--threads", "1"])

    def start_api(self, port: int | None = None, ready_timeout: float = 90) -> Api:
        """Start ``topiary serve`` and wait until ``/readyz`` answers 200."""
        port = port or free_port()
        process = self._start("api", [sys.executable, "-m", "cli.main", "serve", "--port",
                                      str(port)])
        api = Api(process, port, self.api_key)

        def ready() -> bool:
            if not process.alive():
                raise AssertionError(f"the API exited: {process.output()}")
            try:
                return httpx.get(f"{api.base_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, ready_timeout, "the API to answer /readyz", interval=0.3)
        return api

    def submit(self, **overrides: Any) -> str:
        """Queue a tiny job (``tiny_spec`` with ``overrides``) for the cluster's tenant."""
        spec = JobSpec.model_validate(tiny_spec(**overrides))
        assert self.settings.data_root is not None
        with session_scope(self.engine) as session:
            return submit_job(session, self.tenant_id, spec, data_root=self.settings.data_root,
                              max_active_jobs=10_000).id

    def job(self, job_id: str) -> Job:
        return get_job(self.engine, job_id)

    def study_trials(self, job_id: str) -> list[FrozenTrial]:
        """The job's Optuna trials (empty before its study exists)."""
        job = self.job(job_id)
        if job.study_name is None:
            return []
        with self._storage_lock:
            if self._storage is None:
                self._storage = open_storage(self.settings.optuna_url)
            storage = self._storage
        try:
            study_id = storage.get_study_id_from_name(job.study_name)
        except KeyError:
            return []
        return storage.get_all_trials(study_id, deepcopy=False)

    def worker_pid(self, worker_id: str | None) -> int | None:
        """The process id a worker registered with (None: unknown)."""
        if worker_id is None:
            return None
        with session_scope(self.engine) as session:
            return session.scalar(select(WorkerRow.pid).where(WorkerRow.id == worker_id))

    def worker_id_of(self, process: Process) -> str | None:
        """The id the (latest) worker registered from ``process`` uses."""
        with session_scope(self.engine) as session:
            return session.scalar(select(WorkerRow.id).where(WorkerRow.pid == process.pid)
                                  .order_by(WorkerRow.started_at.desc()).limit(1))

    def process_of(self, worker_id: str | None) -> Process | None:
        pid = self.worker_pid(worker_id)
        return next((p for p in self.processes if p.pid == pid and p.alive()), None)

    def wait_until_terminal(self, job_id: str, timeout: float) -> Job:
        def ended() -> Job | None:
            job = self.job(job_id)
            return job if JobStatus(job.status).is_terminal() else None

        return wait_for(ended, timeout, f"job {job_id} to end", interval=0.5)

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        if self._storage is not None:
            self._storage.engine.dispose()
        self.engine.dispose()


# --- where to inject a fault -------------------------------------------------------------

#: Fault point -> (job status, prefix of ``job.phase``) that identifies it. ``mid_trial``
#: is recognised from the trials instead: a running trial of a live worker.
PHASE_POINTS: dict[str, tuple[str, str]] = {
    "preparing": (JobStatus.PREPARING.value, "training a baseline"),
    "scoring": (JobStatus.PREPARING.value, "scoring filters"),
    "finalizing": (JobStatus.FINALIZING.value, "fine-tuning the best plan"),
    "export": (JobStatus.FINALIZING.value, "exporting"),
}
FAULT_POINTS = (*PHASE_POINTS, "mid_trial")


def victim_at(cluster: Cluster, job_id: str, point: str) -> Process | None:
    """The live worker process to kill now if ``job_id`` is at ``point``, else None."""
    if point == "mid_trial":
        job = cluster.job(job_id)
        if job.status != JobStatus.SEARCHING.value:
            return None
        running = [t for t in cluster.study_trials(job_id) if t.state == TrialState.RUNNING
                   and not is_surplus(t)]
        for trial in running:
            process = cluster.process_of(trial.user_attrs.get("worker"))
            if process is not None:
                return process
        return None
    status, prefix = PHASE_POINTS[point]
    job = cluster.job(job_id)
    if job.status != status or not (job.phase or "").startswith(prefix):
        return None
    return cluster.process_of(job.lease_owner)


def kill_at(cluster: Cluster, job_id: str, point: str, timeout: float) -> Process:
    """Wait until ``job_id`` reaches ``point`` and SIGKILL the worker doing it.

    Raises:
        AssertionError: the job never got there (or ended first) within ``timeout``.
    """
    def ready() -> Process | None:
        job = cluster.job(job_id)
        if JobStatus(job.status).is_terminal():
            raise AssertionError(f"job {job_id} ended ({job.status}: {job.error_message}) "
                                 f"before reaching {point}")
        return victim_at(cluster, job_id, point)

    victim: Process = wait_for(ready, timeout, f"job {job_id} to reach {point}", interval=0.05)
    victim.kill()
    return victim


# --- the invariants ------------------------------------------------------------------------

@dataclass
class JobOutcome:
    """What became of one job, and every broken invariant found.

    Attributes:
        status: terminal status (or the status it is stuck in).
        error: ``code: message`` of a failed job.
        finished_trials: COMPLETE or PRUNED trials that count (surplus ones excluded).
        n_trials: what the spec asked for.
        duplicated_trials: finished trials that are retries of a trial that also finished.
        problems: human-readable descriptions of broken invariants (empty: all good).
        attempts: exclusive leases the job lost (and recovered from).
    """

    job_id: str
    status: str
    error: str | None
    finished_trials: int
    n_trials: int
    duplicated_trials: int
    problems: list[str]
    attempts: int = 0

    @property
    def stuck(self) -> bool:
        return not JobStatus(self.status).is_terminal()

    @property
    def lost_trials(self) -> int:
        if self.status != JobStatus.SUCCEEDED.value:
            return 0
        return max(0, self.n_trials - self.finished_trials)


def _duplicates(trials: list[FrozenTrial]) -> int:
    finished = {t.number for t in trials if t.state in FINISHED and not is_surplus(t)}
    duplicated = 0
    for trial in trials:
        if trial.state not in FINISHED:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
        if original is not None and original in finished:
            duplicated += 1
    return duplicated


def _artifact_problems(cluster: Cluster, job: Job) -> list[str]:
    with session_scope(cluster.engine) as session:
        rows = list(session.scalars(select(Artifact).where(Artifact.job_id == job.id)))
    kinds = sorted(row.kind for row in rows)
    problems = []
    if job.status == JobStatus.SUCCEEDED.value and kinds != list(CHECKPOINT_KINDS):
        problems.append(f"artifacts {kinds}, expected one of each of {CHECKPOINT_KINDS}")
    if job.status != JobStatus.SUCCEEDED.value and rows:
        problems.append(f"a {job.status} job has artifacts {kinds}")
    for row in rows:
        path = Path(row.path)
        if not path.is_file():
            problems.append(f"{row.kind} artifact file {path} is missing")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != row.sha256 or path.stat().st_size != row.size:
            problems.append(f"{row.kind} file does not match its recorded sha256/size")
    return problems


def download_problems(api: Api, job: Job) -> list[str]:
    """Download every checkpoint of a succeeded job; each must be whole (sha256 = ETag)."""
    problems = []
    with api.client(timeout=60) as client:
        for kind in CHECKPOINT_KINDS:
            response = client.get(f"/v1/jobs/{job.id}/checkpoint", params={"format": kind})
            if response.status_code != 200:
                problems.append(f"download of {kind}: HTTP {response.status_code}")
                continue
            etag = response.headers.get("etag", "").strip('"')
            if hashlib.sha256(response.content).hexdigest() != etag:
                problems.append(f"partial download of {kind}: body does not match its ETag")
    return problems


def inspect_job(cluster: Cluster, job_id: str) -> JobOutcome:
    """Check one job's invariants (call it once the job ended, or to report it stuck)."""
    job = cluster.job(job_id)
    trials = cluster.study_trials(job_id)
    finished = [t for t in trials if t.state in FINISHED and not is_surplus(t)]
    n_trials = int(job.spec["search"]["n_trials"])
    duplicated = _duplicates(trials)
    problems = _artifact_problems(cluster, job)
    status = job.status
    if not JobStatus(status).is_terminal():
        problems.append(f"stuck in {status} ({job.phase})")
    if status == JobStatus.FAILED.value and not (job.error_code and job.error_message):
        problems.append("failed without a reason")
    if status == JobStatus.SUCCEEDED.value and len(finished) != n_trials:
        problems.append(f"{len(finished)} finished trials, the spec asked for {n_trials}")
    if duplicated:
        problems.append(f"{duplicated} trials finished twice (a retry and its original)")
    error = f"{job.error_code}: {job.error_message}" if job.error_code else None
    return JobOutcome(job_id, status, error, len(finished), n_trials, duplicated, problems,
                      job.attempts)


def leftover_temporaries(cluster: Cluster, job_id: str) -> list[Path]:
    """``.partial`` files a killed writer left in the job's folder (never served)."""
    assert cluster.settings.artifact_dir is not None
    folder = cluster.settings.artifact_dir / job_id
    return sorted(folder.glob(".*.partial")) if folder.is_dir() else []


def copy_logs(cluster: Cluster, destination: Path) -> None:
    """Keep the processes' logs (for a failing test's report)."""
    destination.mkdir(parents=True, exist_ok=True)
    for process in cluster.processes:
        shutil.copy(process.log, destination / process.log.name)


# --- PostgreSQL itself ----------------------------------------------------------------------

def postgres_restart_unavailable(admin_url: str) -> str | None:
    """Why this process cannot restart the PostgreSQL server (None: it can)."""
    from sqlalchemy.engine import make_url

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


def _answers(admin_url: str) -> bool:
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not up yet"
        return False
    finally:
        engine.dispose()


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
    if not _answers(admin_url):
        _pg_ctlcluster("start")
    wait_for(lambda: _answers(admin_url), timeout, "PostgreSQL to answer", interval=0.5)
