"""Real processes against throwaway PostgreSQL databases: workers, the API, and their faults.

Shared by the reliability tests and ``bench/chaos.py``. A :class:`Cluster` owns
two fresh databases (ours, migrated, and Optuna's), a home folder, and every
process it started; :func:`kill_at` SIGKILLs the worker doing a chosen step of a
job. What a job must still be whatever was killed is checked by
:mod:`tests.support.invariants`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, select

from cli.processes import ChildProcess
from core.spec import JobSpec
from search.budget import is_surplus
from search.storage import open_storage
from service.config import Settings
from service.db import create_engine_for, migrate, session_scope
from service.jobs import Job, JobStatus, get_job, submit_job
from service.jobs import Worker as WorkerRow
from service.tenants import create_api_key
from tests.support._launch import program_environment, start_api, start_worker
from tests.support._postgres import create_database, drop_database
from tests.support._private_postgres import PrivatePostgres
from tests.support._waiting import wait_for
from tests.support.specs import chaos_spec

#: Seconds between trial heartbeats for tests that kill a worker mid-trial: its trial is
#: failed after twice this (``TOPIARY_HEARTBEAT_SECONDS``; 10 by default, a 20 s wait).
#: Not with ``tests.support.first_heartbeat``, which holds heartbeats back for seconds.
FAULT_HEARTBEAT_SECONDS = 4


@dataclass
class Api:
    """A live ``topiary serve`` (uvicorn) and an authenticated client for it."""

    process: ChildProcess
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
        server: the PostgreSQL server of the cluster's own, when it was given one (only
            such a server may be stopped: :meth:`restart_postgres`).
    """

    admin_url: str
    settings: Settings
    engine: Engine
    tenant_id: int
    api_key: str
    processes: list[ChildProcess] = field(default_factory=list)
    server: PrivatePostgres | None = None
    _storage: RDBStorage | None = None
    _storage_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    @contextmanager
    def create(cls, admin_url: str, home: Path, *, template: str | None = None,
               logs: Path | None = None, server: PrivatePostgres | None = None,
               lease_seconds: float = 4, max_attempts: int = 6,
               **extra: Any) -> Iterator[Cluster]:
        """A cluster whose processes are all killed, and databases dropped, on exit.

        Args:
            admin_url: the PostgreSQL server's admin URL.
            home: the processes' ``TOPIARY_HOME``.
            template: a migrated database to copy ours from (default: migrate a new one).
            logs: where to copy the processes' logs on exit (default: nowhere).
            server: the private server ``admin_url`` names, if it is one.
            lease_seconds, max_attempts, extra: settings of every process.
        """
        ours = create_database(admin_url, "topiary_rel", template=template)
        theirs = create_database(admin_url, "topiary_relopt")
        cluster = None
        try:
            if template is None:
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
            cluster = cls(admin_url, settings, engine, key.tenant.id, key.key, server=server)
            yield cluster
        finally:
            if cluster is not None:
                cluster.close()
                if logs is not None:
                    cluster.copy_logs(logs)
            for url in (ours, theirs):
                drop_database(admin_url, url, attempts=10)

    def environment(self) -> dict[str, str]:
        settings = self.settings
        return program_environment(
            settings.home, settings.database_url, settings.optuna_url,
            lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
            heartbeat_seconds=settings.heartbeat_seconds, max_upload_mb=settings.max_upload_mb,
            max_concurrent_jobs_per_tenant=settings.max_concurrent_jobs_per_tenant,
            stall_floor_seconds=settings.stall_floor_seconds,
            stall_trial_multiple=settings.stall_trial_multiple,
            rate_limit=settings.rate_limit)

    def _log_path(self, name: str) -> Path:
        return self.settings.home / f"{name}-{len(self.processes)}.log"

    def start_worker(self) -> ChildProcess:
        process = start_worker(self.environment(), self._log_path("worker"))
        self.processes.append(process)
        return process

    def start_api(self, port: int | None = None, ready_timeout: float = 90) -> Api:
        """Start ``topiary serve`` and wait until ``/readyz`` answers 200."""
        log_path = self._log_path("api")
        try:
            served = start_api(self.environment(), log_path, port=port,
                               ready_timeout=ready_timeout)
        except Exception as error:
            raise AssertionError(f"the API did not start: {error}") from error
        self.processes.append(served.process)
        return Api(served.process, served.port, self.api_key)

    def submit(self, **overrides: Any) -> str:
        """Queue a tiny job (``chaos_spec`` with ``overrides``) for the cluster's tenant."""
        spec = JobSpec.model_validate(chaos_spec(**overrides))
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

    def worker_id_of(self, process: ChildProcess) -> str | None:
        """The id the (latest) worker registered from ``process`` uses."""
        with session_scope(self.engine) as session:
            return session.scalar(select(WorkerRow.id).where(WorkerRow.pid == process.pid)
                                  .order_by(WorkerRow.started_at.desc()).limit(1))

    def process_of(self, worker_id: str | None) -> ChildProcess | None:
        pid = self.worker_pid(worker_id)
        return next((p for p in self.processes if p.pid == pid and p.alive()), None)

    def wait_until_terminal(self, job_id: str, timeout: float) -> Job:
        def ended() -> Job | None:
            job = self.job(job_id)
            return job if JobStatus(job.status).is_terminal() else None

        return wait_for(ended, timeout, f"job {job_id} to end", interval=0.5)

    def logs(self, lines: int = 40) -> str:
        """The tail of every process's log, for an assertion message."""
        return "\n".join(f"--- {p.name} {p.pid} ---\n{p.log_tail(lines)}"
                         for p in self.processes)

    def restart_postgres(self, down_seconds: float = 0.0) -> None:
        """Stop the cluster's own server, wait ``down_seconds``, start it: every connection
        of every process is cut."""
        assert self.server is not None, "only a private server may be restarted"
        self.server.restart(down_seconds)

    def copy_logs(self, destination: Path) -> None:
        """Keep the processes' logs (for a failing test's report)."""
        destination.mkdir(parents=True, exist_ok=True)
        for process in self.processes:
            shutil.copy(process.log_path, destination / process.log_path.name)

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
    # workers/finalize.py: "fine-tuning the plan of trial N ..." (or "the narrowed plan").
    "finalizing": (JobStatus.FINALIZING.value, "fine-tuning the "),
    "export": (JobStatus.FINALIZING.value, "exporting"),
}
FAULT_POINTS = (*PHASE_POINTS, "mid_trial")


def victim_at(cluster: Cluster, job_id: str, point: str) -> ChildProcess | None:
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


def kill_at(cluster: Cluster, job_id: str, point: str, timeout: float) -> ChildProcess:
    """Wait until ``job_id`` reaches ``point`` and SIGKILL the worker doing it.

    Raises:
        AssertionError: the job never got there (or ended first) within ``timeout``.
    """
    def ready() -> ChildProcess | None:
        job = cluster.job(job_id)
        if JobStatus(job.status).is_terminal():
            raise AssertionError(f"job {job_id} ended ({job.status}: {job.error_message}) "
                                 f"before reaching {point}")
        return victim_at(cluster, job_id, point)

    victim: ChildProcess = wait_for(ready, timeout, f"job {job_id} to reach {point}",
                                    interval=0.05)
    victim.kill()
    return victim
