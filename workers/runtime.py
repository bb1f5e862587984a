"""What a worker's phases share: database, settings, device, the job's signals."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.storages import RDBStorage
from sqlalchemy import Engine

from core.spec import JobSpec, resolve_data_root
from models.datasets import DataSplits, load_dataset
from search.storage import open_storage
from service.config import Settings
from service.jobs import ClaimedJob, append_event, set_phase
from workers.device import WorkerDevice
from workers.files import JobFiles


@dataclass
class JobRun:
    """One worker's hold on one job.

    Attributes:
        job: the claimed job.
        spec: its validated spec.
        files: where its files go.
        cancel: set when the job is cancelled, the lease is lost or the worker
            stops; training loops end within one step, the search between trials.
        lease_lost: set by the heartbeat when another worker owns the job now.
    """

    job: ClaimedJob
    spec: JobSpec
    files: JobFiles
    cancel: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    cancel_requested: threading.Event = field(default_factory=threading.Event)


@dataclass
class WorkerRuntime:
    engine: Engine
    settings: Settings
    device: WorkerDevice
    worker_id: str
    stopping: threading.Event = field(default_factory=threading.Event)

    def start_run(self, job: ClaimedJob) -> JobRun:
        spec = self.with_timing_threads(JobSpec.model_validate(job.spec))
        assert self.settings.artifact_dir is not None  # Settings fills it in
        files = JobFiles.for_job(self.settings.artifact_dir, self.settings.home, job.id)
        return JobRun(job, spec, files)

    def with_timing_threads(self, spec: JobSpec) -> JobSpec:
        """``spec`` with the threads its timings use on this device, when it sets none
        (``WorkerDevice.timing_threads``); a latency agent's timings keep the agent's."""
        timing = spec.latency
        if (timing.threads is not None or timing.target is not None
                or self.device.timing_threads is None):
            return spec
        return spec.model_copy(update={"latency": timing.model_copy(
            update={"threads": self.device.timing_threads})})

    def study_storage(self) -> RDBStorage:
        """Optuna's storage, its trials' heartbeats ``Settings.heartbeat_seconds`` apart."""
        return open_storage(self.settings.optuna_url, self.settings.heartbeat_seconds)

    def load_data(self, spec: JobSpec) -> DataSplits:
        root = None
        if spec.dataset.root:
            assert self.settings.data_root is not None  # Settings fills it in
            root = resolve_data_root(spec.dataset.root, self.settings.data_root)
        splits = load_dataset(spec.dataset.name, spec.image_size(), root=root, seed=spec.seed,
                              preprocessing=spec.dataset.preprocessing,
                              loader_workers=spec.dataset.loader_workers)
        return splits.to_device(self.device.name)

    def event(self, run: JobRun, kind: str, message: str, data: dict[str, Any] | None = None,
              ) -> None:
        append_event(self.engine, run.job.id, kind, message, data)

    def phase(self, run: JobRun, detail: str) -> None:
        set_phase(self.engine, run.job.id, detail)
        self.event(run, "phase", detail)

    def epoch_reporter(self, run: JobRun, phase: str, kind: str, what: str, epochs: int
                       ) -> Callable[[int, dict[str, float]], None]:
        """A training callback for a long phase: each epoch is an event of ``kind`` ("{what}
        epoch 1/2: val accuracy 0.875") and shows in the job's phase ("{phase}: epoch 1/2
        done, ..."), as a baseline or final epoch on real data takes minutes and the job
        page and ``topiary status`` show the phase."""

        def report(epoch: int, metrics: dict[str, float]) -> None:
            done = f"epoch {epoch}/{epochs}"
            accuracy = f"val accuracy {metrics.get('val_accuracy', 0.0):.3f}"
            self.event(run, kind, f"{what} {done}: {accuracy}", metrics)
            set_phase(self.engine, run.job.id, f"{phase}: {done} done, {accuracy}")

        return report
