"""What workers write about a job besides its status: progress, results, log, artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, update
from sqlalchemy.orm import Session

from core.catalog import CHECKPOINT_FORMATS
from service.db import affected_rows, use_session
from service.errors import NotFoundError
from service.jobs._clock import database_now
from service.jobs._state import ACTIVE_STATUSES
from service.jobs._tables import Artifact, Event, Job

ARTIFACT_KINDS = tuple(CHECKPOINT_FORMATS)


@dataclass(frozen=True)
class ArtifactFile:
    """A file a job produced, as ``succeed_job`` records it.

    Attributes:
        kind: ``safetensors``, ``onnx`` or ``torchscript`` (what ``?format=`` asks for).
        path: absolute path on the shared artifact storage.
        size: bytes.
        sha256: hex digest (served as the download's ETag).
    """

    kind: str
    path: str
    size: int
    sha256: str


def _update_job(session: Session, job_id: str, values: dict[str, Any], *,
                active_only: bool = False) -> bool:
    conditions = [Job.id == job_id]
    if active_only:
        conditions.append(Job.status.in_([s.value for s in ACTIVE_STATUSES]))
    result = session.execute(update(Job).where(*conditions)
                             .values(updated_at=database_now(session), **values)
                             .execution_options(synchronize_session=False))
    return bool(affected_rows(result))


def update_progress(bind: Engine | Session, job_id: str, progress: dict[str, Any],
                    best: dict[str, Any] | None = None) -> bool:
    """Replace the job's progress summary (and its best result so far, if given).

    Args:
        bind: engine or session.
        job_id: the job.
        progress: JSON summary; the API reads ``trials_complete``, ``trials_running``,
            ``trials_failed``, ``trials_pruned`` and ``trials_total`` from it (ints)
            and passes other keys through.
        best: metrics and plan of the best feasible trial so far.

    Returns:
        False when the job has already ended (nothing written).
    """
    values: dict[str, Any] = {"progress": progress}
    if best is not None:
        values["best"] = best
    with use_session(bind) as session:
        return _update_job(session, job_id, values, active_only=True)


def set_baseline(bind: Engine | Session, job_id: str, baseline: dict[str, Any], *,
                 device_type: str | None = None, device_model: str | None = None) -> None:
    """Store the unpruned model's metrics and the device type they were measured on.

    Args:
        bind: engine or session.
        job_id: the job.
        baseline: the metrics.
        device_type: ``cpu`` or ``cuda``.
        device_model: the device model its latency was timed on, when the job's limits
            or objective time latency: from now on only workers of that model claim it.

    Raises:
        NotFoundError: no such job.
    """
    values: dict[str, Any] = {"baseline": baseline}
    if device_type is not None:
        values["device_type"] = device_type
    if device_model is not None:
        values["device_model"] = device_model[:255]
    with use_session(bind) as session:
        if not _update_job(session, job_id, values):
            raise NotFoundError(f"job {job_id} does not exist")


def set_study_name(bind: Engine | Session, job_id: str, study_name: str) -> None:
    """Remember the job's Optuna study (in the Optuna database).

    Raises:
        NotFoundError: no such job.
    """
    with use_session(bind) as session:
        if not _update_job(session, job_id, {"study_name": study_name}):
            raise NotFoundError(f"job {job_id} does not exist")


def set_phase(bind: Engine | Session, job_id: str, phase: str) -> bool:
    """A human-readable detail of what the job is doing (e.g. "training baseline")."""
    with use_session(bind) as session:
        return _update_job(session, job_id, {"phase": phase[:200]}, active_only=True)


def append_event(bind: Engine | Session, job_id: str, kind: str, message: str,
                 data: dict[str, Any] | None = None) -> int:
    """Add a line to the job's log (``GET /v1/jobs/{id}/events``).

    Args:
        bind: engine or session.
        job_id: the job.
        kind: short category (``status``, ``trial``, ``info``, ``warning``, ...).
        message: one line for humans.
        data: JSON details.

    Returns:
        The event's id (increasing; SSE clients resume after it).
    """
    with use_session(bind) as session:
        return session.execute(insert(Event).values(
            job_id=job_id, kind=kind[:32], message=message, data=data,
            created_at=database_now(session)).returning(Event.id)).scalar_one()


def record_artifact(bind: Engine | Session, job_id: str, kind: str, path: str, size: int,
                    sha256: str) -> Artifact:
    """Register a file a job produced (replacing an earlier one of the same kind).

    Args:
        bind: engine or session.
        job_id: the job.
        kind: ``safetensors``, ``onnx`` or ``torchscript`` (what ``?format=`` asks for).
        path: absolute path on the shared artifact storage.
        size: bytes.
        sha256: hex digest (served as the download's ETag).

    Returns:
        The artifact row.
    """
    with use_session(bind) as session:
        session.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind))
        artifact = Artifact(job_id=job_id, kind=kind, path=str(path), size=size, sha256=sha256)
        session.add(artifact)
        session.flush()
        return artifact
