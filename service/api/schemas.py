"""What the API accepts and returns (pydantic), kept apart from the table classes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from core.limits import LimitStanding, limit_standings
from core.progress import JobProgress
from core.spec import Constraints, JobSpec
from service.db import utcnow
from service.jobs import Artifact, ArtifactRead, Event, Job, JobRead, JobStatus
from service.tables import WeightsUpload
from service.trials import TrialPublic

# The body of POST /v1/jobs is the job spec itself (core.spec.JobSpec).
JobCreate = JobSpec


class ErrorPublic(BaseModel):
    """Every error response: a stable code and what to do about it (a server failure names
    the request id under which the server logged it)."""

    code: str
    detail: str | list[dict[str, Any]]
    request_id: str | None = None


class JobError(BaseModel):
    code: str
    message: str


class ArtifactPublic(BaseModel):
    format: str
    size: int
    sha256: str
    url: str

    @classmethod
    def from_row(cls, artifact: Artifact | ArtifactRead) -> ArtifactPublic:
        return cls(format=artifact.kind, size=artifact.size, sha256=artifact.sha256,
                   url=f"/v1/jobs/{artifact.job_id}/checkpoint?format={artifact.kind}")


class JobPublic(BaseModel):
    id: str
    name: str
    status: JobStatus
    phase: str | None
    attempts: int
    cancel_requested: bool
    device_type: str | None
    device_model: str | None = Field(
        description="the device model (GPU name, or CPU model and threads) the baseline's "
                    "latency was timed on; every trial is timed on that model")
    latency_runtime: str = Field(description="what latency is timed in (latency.runtime)")
    waiting_for: str | None = Field(
        default=None, description="what a waiting job needs that no live worker has (its "
                                  "latency runtime, device type or device model)")
    limits: list[LimitStanding] = Field(
        description="every limit of the spec beside the delivered (or best so far) value, "
                    "met or missed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: JobProgress
    baseline: dict[str, Any] | None
    best: dict[str, Any] | None
    error: JobError | None
    study_name: str | None
    artifacts: list[ArtifactPublic]
    spec: dict[str, Any]

    @classmethod
    def from_row(cls, job: Job | JobRead, waiting_for: str | None = None) -> JobPublic:
        return cls(id=job.id, name=job.name, status=JobStatus(job.status), phase=job.phase,
                   attempts=job.attempts, cancel_requested=job.cancel_requested,
                   device_type=job.device_type, device_model=job.device_model,
                   latency_runtime=job.spec.get("latency", {}).get("runtime", "torch"),
                   waiting_for=waiting_for,
                   limits=_limits(job), created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at,
                   progress=_progress(job), baseline=job.baseline, best=job.best,
                   error=(JobError(code=job.error_code, message=job.error_message or "")
                          if job.error_code else None),
                   study_name=job.study_name,
                   artifacts=[ArtifactPublic.from_row(a) for a in job.artifacts],
                   spec=job.spec)


def _limits(job: Job | JobRead) -> list[LimitStanding]:
    constraints = Constraints.model_validate(
        job.spec.get("objective", {}).get("constraints", {}))
    return limit_standings(constraints, job.baseline, job.best)


def _progress(job: Job | JobRead) -> JobProgress:
    reported = dict(job.progress or {})
    reported.setdefault("trials_total", job.spec.get("search", {}).get("n_trials", 0))
    progress = JobProgress.model_validate(reported)
    if job.started_at is None:
        return progress
    end = job.finished_at or utcnow()
    return progress.timed((end - job.started_at).total_seconds(),
                          ended=JobStatus(job.status).is_terminal())


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="jobs matching the filter, over all pages")
    limit: int
    offset: int


class EventPublic(BaseModel):
    id: int
    time: datetime
    kind: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def from_row(cls, event: Event) -> EventPublic:
        return cls(id=event.id, time=event.created_at, kind=event.kind, message=event.message,
                   data=event.data)


class TrialsPublic(BaseModel):
    job_id: str
    study_name: str | None
    data: list[TrialPublic]
    count: int


class WeightsPublic(BaseModel):
    id: str
    filename: str
    size: int
    sha256: str
    format: str
    tensor_count: int
    created_at: datetime

    @classmethod
    def from_row(cls, upload: WeightsUpload) -> WeightsPublic:
        return cls(id=upload.id, filename=upload.filename, size=upload.size,
                   sha256=upload.sha256, format=upload.format,
                   tensor_count=upload.tensor_count, created_at=upload.created_at)


class ArchitecturePublic(BaseModel):
    name: str
    description: str
    arguments: dict[str, Any]
    default_input_size: int
    family: str
    argument_rules: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="type and range of each argument a spec may set")


class DatasetPublic(BaseModel):
    name: str
    description: str
    needs_root: bool
    num_classes: int | None
    default_image_size: int
    arguments: dict[str, Any]


class HealthPublic(BaseModel):
    status: str
