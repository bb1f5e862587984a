"""Errors of the job service, all under ``core.errors.TopiaryError``.

The API maps each class to one HTTP status in a single handler
(``service.api.errors``); workers see the same classes from ``service.jobs``.
"""

from __future__ import annotations

from typing import Any

from core.errors import CheckpointError, InvalidSpecError, TopiaryError


class ConfigurationError(TopiaryError):
    """Settings that cannot work together (fix the TOPIARY_* environment)."""

    code = "configuration_error"


class DatabaseError(TopiaryError):
    """The database refused or could not run a statement."""

    code = "database_error"


class NotFoundError(TopiaryError):
    """A job, upload or key that does not exist for the caller's tenant."""

    code = "not_found"


class InvalidTransitionError(TopiaryError):
    """A job state change refused because the job is not (any more) in an allowed state.

    Attributes:
        job_id: the job.
        current: its status when the change was refused, or None if it is gone.
        target: the status that was asked for.
    """

    code = "invalid_transition"

    def __init__(self, message: str, *, job_id: str, current: str | None, target: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.current = current
        self.target = target


class AuthenticationError(TopiaryError):
    """A request without a valid API key."""

    code = "unauthenticated"


class TooManyJobsError(TopiaryError):
    """The tenant already runs as many jobs as it is allowed to."""

    code = "too_many_jobs"


class SpecValidationError(InvalidSpecError):
    """A job spec that pydantic accepted but the server cannot run.

    Attributes:
        errors: one dict per bad field: ``loc`` (path in the spec), ``msg``, ``type``.
    """

    code = "invalid_spec"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


class InvalidUploadError(CheckpointError):
    """An uploaded weights file that is neither safetensors nor a plain state dict."""

    code = "invalid_upload"


class UploadTooLargeError(TopiaryError):
    """An upload above ``TOPIARY_MAX_UPLOAD_MB``."""

    code = "upload_too_large"
