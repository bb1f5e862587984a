"""The worker process: register, claim jobs, run their phases, report, recover.

``topiary worker`` runs ``Worker.run_forever``. One worker per device. Jobs
come only through ``service.jobs`` (claims, leases, guarded transitions).
SIGTERM / SIGINT: the current trial is abandoned within one training step,
the job's hold is released (the job is not failed) and the process exits 0.
A worker that joins a running search and cannot read the job's data, which the worker
that prepared it read (its ``TOPIARY_DATA_ROOT`` lacks the folder, say), does not fail
the job: it says so in the job's events, leaves the search and never claims the job
again (``Worker.declined``). Under an exclusive hold (preparing, finalizing) the job
fails with the reason: the data may be gone for every worker, and a job that every
worker gave back would wait forever.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType

import torch
from pydantic import ValidationError

from core.errors import DatasetError, InvalidSpecError, TopiaryError, TrainingCancelled
from models.devices import DeviceUnavailableError
from search.storage import silence_optuna_logs
from service.config import Settings, settings_problems
from service.db import create_engine_for
from service.errors import InvalidTransitionError
from service.jobs import (
    ClaimedJob,
    JobStatus,
    claim_next_job,
    fail_job,
    register_worker,
    release_lease,
    requeue_expired,
    stop_worker,
    transition,
)
from workers.device import open_device
from workers.finalize import finalize
from workers.heartbeat import Heartbeat
from workers.outage import is_database_outage, retry_through_outage
from workers.prepare import prepare
from workers.runtime import JobRun, WorkerRuntime
from workers.search_phase import search

log = logging.getLogger("topiary.worker")


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "spec"
    return f"{where}: {first['msg']}"


def failure_of(error: BaseException, spec_batch: int | None = None) -> tuple[str, str]:
    """(error code, message a user can act on) for an exception that ended a job."""
    if isinstance(error, torch.OutOfMemoryError):
        return ("out_of_memory", f"out of memory on the worker's device at batch size "
                                 f"{spec_batch}; lower fine_tune.batch_size or latency.batch_size")
    if isinstance(error, TopiaryError):
        return error.code, str(error)
    return "internal_error", (f"the worker hit an unexpected {type(error).__name__}: {error}; "
                              "this is a bug in Topiary, please report it with the job id")


class Worker:
    """A long-running worker bound to one device.

    Args:
        settings: where the databases and files are.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch intra-op threads (None: torch's default).
        poll_seconds: sleep between claims when there is nothing to do.
        runtimes: offer only these of the latency runtimes it has (None: all of them).
    """

    def __init__(self, settings: Settings, device: str = "auto", threads: int | None = None,
                 poll_seconds: float = 1.0, runtimes: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.poll_seconds = poll_seconds
        # Optuna logs through its own handler a line per study and trial; events carry them.
        silence_optuna_logs()
        engine = create_engine_for(settings.database_url)
        worker_device = open_device(device, threads)
        if runtimes is not None:
            worker_device = replace(worker_device, runtimes=tuple(
                runtime for runtime in worker_device.runtimes if runtime in runtimes))
        log.info("worker on %s times latency in %s%s", worker_device.description,
                 ", ".join(worker_device.runtimes) or "no runtime",
                 "" if worker_device.timing_threads is None else
                 f", on {worker_device.timing_threads} thread(s) unless a job sets "
                 "latency.threads")
        worker_id = retry_through_outage(
            lambda: register_worker(engine, socket.gethostname(), worker_device.type,
                                    worker_device.description, pid=os.getpid(),
                                    runtimes=worker_device.runtimes),
            "registering the worker")
        self.runtime = WorkerRuntime(engine, settings, worker_device, worker_id)
        #: Jobs this worker gave back because it cannot read their data (``_decline``).
        self.declined: set[str] = set()
        self.heartbeat = Heartbeat(engine, worker_id, interval=settings.lease_seconds / 4)

    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current step, then stopping", signum)
        self.runtime.stopping.set()
        with self.heartbeat.run_lock:
            if self.heartbeat.current is not None:
                self.heartbeat.current.cancel.set()

    def run_forever(self, exit_when_idle: bool = False) -> None:
        """Claim and work until stopped (or, with ``exit_when_idle``, until no work is left)."""
        self.heartbeat.start()
        try:
            while not self.runtime.stopping.is_set():
                job = self._next_job()
                if job is None:
                    if exit_when_idle:
                        return
                    self.runtime.stopping.wait(self.poll_seconds)
                    continue
                try:
                    self.work_on(job)
                except Exception as error:
                    if not is_database_outage(error):
                        raise
                    # The job's hold is no longer renewed: it lapses and the job is recovered.
                    log.warning("job %s: the database went away while the worker was "
                                "reporting on it (%s)", job.id, error)
        finally:
            self.heartbeat.stop()
            try:
                stop_worker(self.runtime.engine, self.worker_id)
            except Exception as error:  # noqa: BLE001 - the heartbeat going stale says the same
                log.warning("could not record that worker %s stopped: %s", self.worker_id,
                            error)
            self.runtime.engine.dispose()

    def _next_job(self) -> ClaimedJob | None:
        """Recover expired holds, then claim; waits out a database outage (bounded)."""
        engine = self.runtime.engine

        def claim() -> ClaimedJob | None:
            requeue_expired(engine, max_attempts=self.settings.max_attempts)
            device = self.runtime.device
            return claim_next_job(engine, self.worker_id, device.type,
                                  runtimes=device.runtimes, device_model=device.description,
                                  declined=self.declined)

        try:
            return retry_through_outage(claim, "claiming a job", stop=self.runtime.stopping)
        except Exception as error:
            if self.runtime.stopping.is_set() and is_database_outage(error):
                return None
            raise

    def work_on(self, job: ClaimedJob) -> None:
        try:
            run = self.runtime.start_run(job)
        except ValidationError as error:
            # The server checked this spec, but this worker reads it otherwise (another
            # version of Topiary): the job fails with the reason, and the worker goes on
            # (retried, such a job would end every worker that claims it).
            message = (f"this worker cannot read the job's spec ({error.error_count()} "
                       f"error(s): {_first_error(error)}); is it running another version of "
                       "Topiary than the server? Resubmit the job once they match")
            log.error("job %s failed: %s", job.id, message)
            self._fail(job.id, InvalidSpecError.code, message)
            return
        self.heartbeat.watch(run)
        log.info("worker %s took job %s (%s)", self.worker_id, job.id, job.status)
        try:
            self._phases(run)
        except TrainingCancelled:
            self._after_interruption(run)
        except InvalidTransitionError as error:
            # Someone else moved the job (cancelled, requeued, finalised): not our failure.
            log.info("job %s moved on without us: %s", job.id, error)
        except DatasetError as error:
            # A participant's search was prepared on data another worker read.
            if not run.job.exclusive and not run.cancel.is_set():
                self._decline(run, error)
            else:
                self._end(run, DatasetError(
                    f"{error} (read on worker {self.worker_id}, whose TOPIARY_DATA_ROOT is "
                    f"{str(self.settings.data_root)!r})"))
        except Exception as error:  # noqa: BLE001 - every failure ends the job with a reason
            self._end(run, error)
        finally:
            self.heartbeat.watch(None)

    def _end(self, run: JobRun, error: Exception) -> None:
        """After ``error`` stopped the job's phases: stop as asked (cancelled, lease lost,
        worker stopping), give the job back (a database outage), or fail it with a reason."""
        if run.cancel.is_set():
            self._after_interruption(run)
        elif is_database_outage(error):
            # Not the job's fault: every phase can be redone, so it goes back to the
            # queue (or the search loses one participant) and is claimed again.
            log.warning("job %s: the database went away (%s); giving the job back",
                        run.job.id, error)
            self._give_back(run)
        else:
            code, message = failure_of(error, run.spec.fine_tune.batch_size)
            log.exception("job %s failed: %s", run.job.id, message)
            self._fail(run.job.id, code, message)

    def _decline(self, run: JobRun, error: DatasetError) -> None:
        """This worker joined the job's search but cannot read the data the worker that
        prepared it read (a searching job's baseline was measured on it): this worker's
        set-up is at fault, not the job. The job's events say so, the worker leaves the
        search (which goes on with its other workers) and never claims the job again."""
        job_id = run.job.id
        self.declined.add(job_id)
        message = (f"worker {self.worker_id} cannot read this job's data, which another "
                   f"worker read ({error}); the job is left to the workers that can read it. "
                   "Give that worker's TOPIARY_DATA_ROOT the same folders as the server's")
        log.error("job %s: %s", job_id, message)
        self.runtime.event(run, "worker", message,
                           {"worker_id": self.worker_id, "declined": True,
                            "error_code": error.code})
        self._give_back(run)

    def _phases(self, run: JobRun) -> None:
        if run.job.status is JobStatus.PREPARING:
            prepare(self.runtime, run)
        if self._interrupted(run):
            return self._after_interruption(run)
        if search(self.runtime, run):
            if self._interrupted(run):
                return self._after_interruption(run)
            finalize(self.runtime, run)
        elif self._interrupted(run):
            self._after_interruption(run)
        else:
            release_lease(self.runtime.engine, run.job.id, self.worker_id)

    @staticmethod
    def _interrupted(run: JobRun) -> bool:
        return run.cancel.is_set()

    def _after_interruption(self, run: JobRun) -> None:
        """Cancelled by the user, lease lost, or the worker is stopping."""
        engine, job_id = self.runtime.engine, run.job.id
        if run.cancel_requested.is_set():
            try:
                transition(engine, job_id, JobStatus.CANCELLED, phase="cancelled")
                self.runtime.event(run, "status", f"cancelled; worker {self.worker_id} stopped")
            except InvalidTransitionError:
                pass  # another participant already moved it
        elif not run.lease_lost.is_set():
            release_lease(engine, job_id, self.worker_id)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        try:
            retry_through_outage(lambda: fail_job(self.runtime.engine, job_id, code, message),
                                 f"failing job {job_id}")
        except InvalidTransitionError:
            pass

    def _give_back(self, run: JobRun) -> None:
        retry_through_outage(lambda: release_lease(self.runtime.engine, run.job.id,
                                                   self.worker_id),
                             f"giving job {run.job.id} back", stop=self.runtime.stopping)


#: Our packages' loggers, whose lines a worker writes at ``Settings.log_level``; every
#: other library's only from WARNING up (the ONNX exporter logs each optimisation pass at
#: INFO).
OWN_LOGGERS = ("topiary", "core", "models", "search", "workers", "service", "cli")


def configure_logging(level: str) -> None:
    """A worker's log: its own lines at ``level``, other libraries' from WARNING up."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def main(device: str = "auto", threads: int | None = None, exit_when_idle: bool = False) -> int:
    """Entry point of ``topiary worker``: returns the process exit status (2: bad settings)."""
    try:
        settings = Settings()
    except ValidationError as error:
        configure_logging("INFO")
        log.error("bad settings: %s", settings_problems(error))
        return 2
    configure_logging(settings.log_level)
    settings.ensure_directories()
    try:
        worker = Worker(settings, device=device, threads=threads)
    except DeviceUnavailableError as error:
        log.error("%s", error)
        return 2
    worker.install_signal_handlers()
    started = time.time()
    worker.run_forever(exit_when_idle=exit_when_idle)
    log.info("worker %s stopped after %.0f s", worker.worker_id, time.time() - started)
    return 0
