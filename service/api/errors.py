"""The one place where errors become HTTP responses (``{"code", "detail"}`` bodies).

Domain errors carry no HTTP knowledge; this table decides their status. Request
validation keeps FastAPI's list of bad fields. A server-side failure (5xx) answers a
generic message with a request id; what failed is only in the server log, under that id.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from core.errors import CheckpointError, InvalidSpecError, TopiaryError
from service.errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseError,
    InvalidTransitionError,
    LimitExceededError,
    NotFoundError,
    SpecValidationError,
    UploadQuotaError,
    UploadTooLargeError,
)

logger = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides.
STATUS_BY_ERROR: list[tuple[type[TopiaryError], int]] = [
    (AuthenticationError, 401),
    (NotFoundError, 404),
    (InvalidTransitionError, 409),
    (UploadTooLargeError, 413),
    (UploadQuotaError, 413),
    (InvalidSpecError, 422),
    (CheckpointError, 422),
    (LimitExceededError, 429),
    (ConfigurationError, 500),
    (DatabaseError, 503),
]


def status_for(error: TopiaryError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return 500


def _fields(errors: list[dict[str, Any]], prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Bad fields as ``{loc, msg, type}`` (no echo of the submitted values)."""
    return [{"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in errors]


_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
SERVER_FAILURE = ("{what}; retry in a few seconds, and if it persists give the operator "
                  "this request id: {request_id}")


def request_id(scope: Scope) -> str:
    """The proxy's ``X-Request-ID`` when it sent a plain one, else a new id."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex[:16]


def error_response(error: TopiaryError, scope: Scope) -> tuple[int, dict[str, Any],
                                                               dict[str, str]]:
    """Status, JSON body and headers of the response to ``error`` (also used by the
    middleware that answers before the app runs)."""
    status = status_for(error)
    detail: str | list[dict[str, Any]] = str(error)
    if isinstance(error, SpecValidationError):
        detail = _fields(error.errors, ("body",))
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, LimitExceededError):
        headers.update(error.headers)
        headers["Retry-After"] = str(error.retry_after)
    body: dict[str, Any] = {"code": error.code, "detail": detail}
    if status >= 500:
        if status == 503:
            headers["Retry-After"] = "5"
        body, headers = _server_failure(scope, error, error.code, headers,
                                        getattr(error, "public", None))
    return status, body, headers


def _server_failure(scope: Scope, error: BaseException, code: str, headers: dict[str, str],
                    what: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The generic body of a 5xx; the details go to the log under the request id."""
    identifier = request_id(scope)
    logger.error("request failed", exc_info=error,
                 extra={"path": scope.get("path"), "code": code, "request_id": identifier})
    detail = SERVER_FAILURE.format(what=what or "the server could not complete the request",
                                   request_id=identifier)
    return ({"code": code, "detail": detail, "request_id": identifier},
            {**headers, "X-Request-ID": identifier})


async def _topiary_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, TopiaryError)
    status, body, headers = error_response(error, request.scope)
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"code": "invalid_request", "detail": _fields(list(error.errors()))},
                        status_code=422)


def too_large_body(max_upload_mb: float) -> dict[str, str]:
    """The 413 response body (also sent by ``service.api.guard`` before routing)."""
    return {"code": "upload_too_large",
            "detail": f"the request body is too large (uploads are limited to "
                      f"{max_upload_mb:g} MiB by TOPIARY_MAX_UPLOAD_MB, JSON bodies to 64 KiB)"}


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 413:
        return JSONResponse(too_large_body(request.app.state.settings.max_upload_mb),
                            status_code=413, headers=error.headers)
    if error.status_code == 408:
        seconds = request.app.state.settings.body_idle_timeout_seconds
        return JSONResponse({"code": "request_timeout",
                             "detail": f"the request body stopped arriving for {seconds:g} s "
                                       "(TOPIARY_BODY_IDLE_TIMEOUT_SECONDS); send it again"},
                            status_code=408, headers=error.headers)
    return JSONResponse({"code": f"http_{error.status_code}", "detail": error.detail},
                        status_code=error.status_code, headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    body, headers = _server_failure(request.scope, error, "internal_error", {})
    return JSONResponse(body, status_code=500, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TopiaryError, _topiary_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
