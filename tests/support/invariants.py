"""What a job must be at the end whatever was killed on the way: terminal, exactly
``n_trials`` finished trials, none counted twice, one checkpoint per kind whose bytes
match their digest, and only whole files served."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy import select

from core.catalog import CHECKPOINT_FORMATS
from search.budget import FINISHED, is_surplus
from service.db import session_scope
from service.jobs import Artifact, Job, JobStatus
from tests.support.cluster import Api, Cluster

CHECKPOINT_KINDS = tuple(sorted(CHECKPOINT_FORMATS))


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
