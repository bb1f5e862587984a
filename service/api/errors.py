"""The one place where errors become HTTP responses (``{"code", "detail"}`` bodies).

Domain errors carry no HTTP knowledge; this table decides their status. Request
validation keeps FastAPI's list of bad fields. Anything unexpected is a logged 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import CheckpointError, InvalidSpecError, TopiaryError
from service.errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseError,
    InvalidTransitionError,
    NotFoundError,
    SpecValidationError,
    TooManyJobsError,
    UploadTooLargeError,
)

logger = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides.
STATUS_BY_ERROR: list[tuple[type[TopiaryError], int]] = [
    (AuthenticationError, 401),
    (NotFoundError, 404),
    (InvalidTransitionError, 409),
    (UploadTooLargeError, 413),
    (InvalidSpecError, 422),
    (CheckpointError, 422),
    (TooManyJobsError, 429),
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


async def _topiary_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, TopiaryError)
    status = status_for(error)
    detail: str | list[dict[str, Any]] = str(error)
    if isinstance(error, SpecValidationError):
        detail = _fields(error.errors, ("body",))
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        headers["Retry-After"] = "5"
    if status >= 500:
        logger.error("request failed", exc_info=error,
                     extra={"path": request.url.path, "code": error.code})
    return JSONResponse({"code": error.code, "detail": detail}, status_code=status,
                        headers=headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"code": "invalid_request", "detail": _fields(list(error.errors()))},
                        status_code=422)


def too_large_body(max_upload_mb: float) -> dict[str, str]:
    """The 413 response body (also sent by ``service.api.limits`` before routing)."""
    return {"code": "upload_too_large",
            "detail": f"the request body is too large (uploads are limited to "
                      f"{max_upload_mb:g} MiB by TOPIARY_MAX_UPLOAD_MB, JSON bodies to 1 MiB)"}


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 413:
        return JSONResponse(too_large_body(request.app.state.settings.max_upload_mb),
                            status_code=413)
    return JSONResponse({"code": f"http_{error.status_code}", "detail": error.detail},
                        status_code=error.status_code, headers=error.headers)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("unexpected error", exc_info=error, extra={"path": request.url.path})
    return JSONResponse({"code": "internal_error",
                         "detail": "the server failed unexpectedly; the operator's logs "
                                   "have the details"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TopiaryError, _topiary_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
