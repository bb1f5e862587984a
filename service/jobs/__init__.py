"""The job state machine and repository: the only code that writes a job's status.

Callers (the API, the workers) import from here, never from the private modules.
The package owns its tables (``_tables``: jobs, events, artifacts, participants,
workers). Every status write is one guarded ``UPDATE`` that reads the transition
table (``_guard``). Every function takes an engine (it opens and commits its own
transaction) or a session (the caller's transaction is used). See ``_leases`` for
how exclusive leases (preparing, finalizing) and shared search participations work.
"""

from __future__ import annotations

from service.errors import InvalidTransitionError, NotFoundError
from service.jobs._leases import (
    TOO_MANY_ATTEMPTS,
    ClaimedJob,
    active_participants,
    claim_next_job,
    release_lease,
    renew_lease,
    requeue_expired,
)
from service.jobs._queries import (
    ArtifactRead,
    JobRead,
    count_jobs_by_status,
    get_artifact,
    get_job,
    get_job_for_key,
    list_events,
    list_jobs,
    upload_path,
)
from service.jobs._records import (
    ARTIFACT_KINDS,
    ArtifactFile,
    append_event,
    record_artifact,
    set_baseline,
    set_phase,
    set_study_name,
    update_progress,
)
from service.jobs._removal import RemovedJob, delete_job, remove_job_files
from service.jobs._stalls import STALL_EVENT, count_stalls, report_stall
from service.jobs._state import (
    ACTIVE_STATUSES,
    ALLOWED_FROM,
    EXCLUSIVE_STATUSES,
    TERMINAL_STATUSES,
    JobStatus,
    allowed_sources,
    can_transition,
)
from service.jobs._submit import requested_device_type, submission_errors, submit_job
from service.jobs._tables import Artifact, Event, Job, JobParticipant, Worker
from service.jobs._transitions import (
    fail_job,
    is_cancel_requested,
    request_cancel,
    succeed_job,
    transition,
)
from service.jobs._workers import (
    LiveWorkers,
    count_live_workers,
    register_worker,
    stop_worker,
    waiting_for,
    worker_heartbeat,
)

__all__ = [
    "ACTIVE_STATUSES",
    "ALLOWED_FROM",
    "ARTIFACT_KINDS",
    "EXCLUSIVE_STATUSES",
    "STALL_EVENT",
    "TERMINAL_STATUSES",
    "TOO_MANY_ATTEMPTS",
    "Artifact",
    "ArtifactFile",
    "ArtifactRead",
    "ClaimedJob",
    "RemovedJob",
    "Event",
    "InvalidTransitionError",
    "Job",
    "JobRead",
    "JobParticipant",
    "JobStatus",
    "LiveWorkers",
    "NotFoundError",
    "Worker",
    "active_participants",
    "allowed_sources",
    "append_event",
    "can_transition",
    "claim_next_job",
    "count_jobs_by_status",
    "count_live_workers",
    "count_stalls",
    "delete_job",
    "fail_job",
    "get_artifact",
    "get_job",
    "get_job_for_key",
    "is_cancel_requested",
    "list_events",
    "list_jobs",
    "record_artifact",
    "register_worker",
    "remove_job_files",
    "release_lease",
    "renew_lease",
    "report_stall",
    "request_cancel",
    "requested_device_type",
    "requeue_expired",
    "set_baseline",
    "set_phase",
    "set_study_name",
    "stop_worker",
    "submission_errors",
    "submit_job",
    "succeed_job",
    "transition",
    "update_progress",
    "upload_path",
    "waiting_for",
    "worker_heartbeat",
]
