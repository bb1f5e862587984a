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
    """The database refused or could not run a statement.

    Attributes:
        public: which store failed, for the client (the message, with the driver's
            words, is for the server log only).
    """

    code = "database_error"

    def __init__(self, message: str, *, public: str = "the database is unavailable") -> None:
        super().__init__(message)
        self.public = public


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


class LimitExceededError(TopiaryError):
    """A request over one of the server's limits that will pass later (HTTP 429).

    Attributes:
        retry_after: seconds after which the same request may pass.
        headers: extra response headers (the rate limit's ``RateLimit-*``).
    """

    code = "limit_exceeded"

    def __init__(self, message: str, *, retry_after: int,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.headers = headers or {}


class TooManyJobsError(LimitExceededError):
    """The tenant already runs as many jobs as it is allowed to."""

    code = "too_many_jobs"


class JobQuotaError(LimitExceededError):
    """The tenant submitted its jobs of the day."""

    code = "job_quota_exceeded"


class RateLimitedError(LimitExceededError):
    """The API key sent more requests than its rate allows."""

    code = "rate_limited"


class TooManyStreamsError(LimitExceededError):
    """The API key already holds as many open event streams as it may."""

    code = "too_many_streams"


class UploadQuotaError(TopiaryError):
    """The tenant's stored weights would exceed its quota (delete some first)."""

    code = "upload_quota_exceeded"


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
