"""The agent's HTTP API (Starlette): secret first, bounded bodies, one timing at a time.

* Every path but ``/healthz`` needs ``Authorization: Bearer <secret>``, compared in
  constant time before anything of the body is read (401, connection closed).
* Bodies are streamed and counted: a model over ``max_model_mib`` is refused (413)
  from its ``Content-Length`` or as soon as the count passes it; a timing request
  over 64 KiB likewise. Uploads are hashed as they arrive and kept only when the
  digest matches and the model passes ``onnx.checker`` and loads in the runtime.
* The device does one thing at a time (checking an upload, or a timing), so a
  timing is never disturbed by another; a few requests may wait for it, for at
  most ``queue_seconds``; the rest get 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cli.latency_agent._settings import AgentSettings
from cli.latency_agent._store import ModelStore
from cli.latency_agent._timing import (
    ModelRefused,
    TimingTooLong,
    check_model,
    compare_models,
    cpu_name,
    load_session,
)
from core.latency_agent import (
    COMPARE_PATH,
    DIGEST_PATTERN,
    HEALTH_PATH,
    INFO_PATH,
    MODELS_PATH,
    AgentProblem,
    CompareRequest,
)

__all__ = ["create_app"]

MAX_REQUEST_BYTES = 64 << 10
#: Seconds a busy agent tells clients to wait before they ask again.
RETRY_AFTER_SECONDS = 2


@dataclass
class Refusal(Exception):
    """An answer other than success: HTTP status, stable code, what to do."""

    status: int
    code: str
    detail: str
    missing: tuple[str, ...] = ()
    retry_after: int | None = None
    close: bool = False

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if self.close:  # the body was not read: do not reuse the connection
            headers["Connection"] = "close"
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        problem = AgentProblem(error=self.code, detail=self.detail, missing=list(self.missing))
        return JSONResponse(problem.model_dump(), status_code=self.status, headers=headers)


class SecretCheck:
    """ASGI middleware: refuse a request without the secret before its body is read."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.expected = f"Bearer {secret}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != HEALTH_PATH:
            given = next((value for name, value in scope["headers"]
                          if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                refusal = Refusal(401, "unauthorized", "wrong or missing secret: send "
                                  "Authorization: Bearer <the agent's secret>", close=True)
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DeviceGate:
    """One job on the device at a time; at most ``max_waiting`` wait, each for a while."""

    def __init__(self, max_waiting: int, wait_seconds: float) -> None:
        self._lock = asyncio.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting
        self.wait_seconds = wait_seconds

    def _busy(self) -> Refusal:
        return Refusal(503, "busy", "the agent is timing other models; ask again later",
                       retry_after=RETRY_AFTER_SECONDS)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._lock.locked() and self._waiting >= self.max_waiting:
            raise self._busy()
        self._waiting += 1
        try:
            await asyncio.wait_for(self._lock.acquire(), self.wait_seconds)
        except TimeoutError:
            raise self._busy() from None
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


async def _read_body(request: Request, limit: int, what: str,
                     write: Callable[[bytes], object]) -> int:
    """Stream the body into ``write``, refusing it once it passes ``limit`` bytes."""
    too_large = Refusal(413, "too_large", f"the {what} is larger than this agent accepts "
                        f"({limit} bytes); start the agent with a larger limit", close=True)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, "bad_request", "Content-Length is not a number", close=True)
        if int(declared) > limit:
            raise too_large
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        write(chunk)
    return size


class AgentApp:
    """The routes, over one store and one device gate."""

    def __init__(self, settings: AgentSettings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self.runtimes = settings.runtimes()
        self.gate = DeviceGate(settings.max_waiting, settings.queue_seconds)
        self.uploads = 0

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        settings = self.settings
        return JSONResponse({
            "runtimes": self.runtimes, "device_type": settings.device,
            "device_name": cpu_name() if settings.device == "cpu" else settings.device,
            "threads": settings.threads, "max_model_bytes": settings.max_model_bytes,
            "max_models": settings.max_models, "max_runs": 10_000})

    async def put_model(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        if not re.fullmatch(DIGEST_PATTERN, digest):
            raise Refusal(400, "bad_digest", "the path must end in the model's sha256, "
                          "64 lower-case hex digits", close=True)
        if digest in self.store:
            return JSONResponse({"sha256": digest, "stored": False}, status_code=200,
                                headers={"Connection": "close"})
        if self.uploads >= self.settings.max_uploads:
            raise Refusal(503, "busy", "other uploads are in progress; ask again later",
                          retry_after=RETRY_AFTER_SECONDS, close=True)
        self.uploads += 1
        temporary = self.store.temporary_path()
        try:
            size = await self._receive_model(request, temporary, digest)
            async with self.gate.hold():
                await run_in_threadpool(self._check_and_keep, temporary, digest)
        finally:
            self.uploads -= 1
            temporary.unlink(missing_ok=True)
        return JSONResponse({"sha256": digest, "stored": True, "bytes": size}, status_code=201)

    async def _receive_model(self, request: Request, destination: Path, digest: str) -> int:
        hasher = hashlib.sha256()
        with destination.open("wb") as sink:
            def write(chunk: bytes) -> None:
                hasher.update(chunk)
                sink.write(chunk)

            try:
                async with asyncio.timeout(self.settings.upload_seconds):
                    size = await _read_body(request, self.settings.max_model_bytes,
                                            "model", write)
            except TimeoutError:
                raise Refusal(408, "upload_too_slow", "the upload took longer than "
                              f"{self.settings.upload_seconds:.0f} s", close=True) from None
        if size == 0:
            raise Refusal(422, "model_refused", "the upload is empty; send the ONNX file")
        if hasher.hexdigest() != digest:
            raise Refusal(400, "digest_mismatch", f"the upload's sha256 is "
                          f"{hasher.hexdigest()}, not the {digest} its path names")
        return size

    def _check_and_keep(self, uploaded: Path, digest: str) -> None:
        check_model(uploaded)
        load_session(uploaded, self.runtimes[0], self.settings.device, threads=1)
        self.store.add(digest, uploaded)

    async def compare(self, request: Request) -> Response:
        body = bytearray()
        await _read_body(request, MAX_REQUEST_BYTES, "timing request", body.extend)
        try:
            asked = CompareRequest.model_validate_json(bytes(body))
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}"
                                 for item in error.errors(include_input=False))
            raise Refusal(422, "bad_request", problems) from None
        self._check_request(asked)
        async with self.gate.hold():
            reference, candidate = self._held(asked.reference, asked.candidate)
            result = await run_in_threadpool(
                compare_models, reference, candidate, asked, self.settings.device,
                self.settings.threads, self.settings.max_timing_seconds)
        return JSONResponse(result.model_dump())

    def _held(self, *digests: str) -> list[Path]:
        """The files of ``digests``, or a 404 that lists those to upload first."""
        paths = [self.store.path(digest) for digest in digests]
        missing = [digest for digest, path in zip(digests, paths, strict=True) if path is None]
        if missing:
            raise Refusal(404, "unknown_models", "upload these models first (PUT "
                          f"{MODELS_PATH}/<sha256>)", missing=tuple(dict.fromkeys(missing)))
        return [path for path in paths if path is not None]

    def _check_request(self, asked: CompareRequest) -> None:
        if asked.runtime not in self.runtimes:
            raise Refusal(422, "runtime_unavailable", f"this agent offers "
                          f"{', '.join(self.runtimes)}, not {asked.runtime}")
        if asked.input_elements() > self.settings.max_input_elements:
            raise Refusal(422, "input_too_large", f"a batch of {asked.input_elements()} "
                          f"values is more than this agent's {self.settings.max_input_elements}")


async def _refused(request: Request, error: Exception) -> Response:
    if isinstance(error, ModelRefused):
        error = Refusal(422, "model_refused", str(error))
    elif isinstance(error, TimingTooLong):
        error = Refusal(422, "timing_too_long", str(error))
    assert isinstance(error, Refusal)
    return error.response()


def create_app(settings: AgentSettings, store: ModelStore) -> ASGIApp:
    """The agent's ASGI application (behind the secret check)."""
    agent = AgentApp(settings, store)
    routes = [
        Route(HEALTH_PATH, agent.health, methods=["GET"]),
        Route(INFO_PATH, agent.info, methods=["GET"]),
        Route(f"{MODELS_PATH}/{{digest}}", agent.put_model, methods=["PUT"]),
        Route(COMPARE_PATH, agent.compare, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {Refusal: _refused, ModelRefused: _refused,
                                TimingTooLong: _refused}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return SecretCheck(app, settings.secret.get_secret_value())
