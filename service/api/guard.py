"""The guard in front of the app: what every request meets before a byte of its body is read.

One plain ASGI middleware (no per-request task or thread of its own):

* ``/v1``: the ``Authorization`` header must hold a well-formed key (401 otherwise,
  without a query); the key's request rate is counted (429 with ``Retry-After`` and
  ``RateLimit-*`` headers, ``service.api.ratelimit``); a request that carries a body
  is then authenticated against the database, in a worker thread, before its body
  is read. A request without a body is authenticated in the one worker-thread call
  that serves it, on that call's connection (``deps.CommittingRoute``): a second
  hand-off to the thread pool would cost as much as the rest of a ``GET``.
* ``/metrics`` and ``/docs`` (with ``/openapi.json``) as ``TOPIARY_METRICS`` and
  ``TOPIARY_DOCS`` say; refused ones answer 404 (401 for ``/metrics`` with a bad key).
* Every request: a body over its limit is refused (413: at once when declared, when it
  streams past the limit otherwise), a body that pauses longer than
  ``TOPIARY_BODY_IDLE_TIMEOUT_SECONDS`` ends the request (408); every response gets
  ``Cache-Control: no-store`` unless it set its own; callbacks a route registered with
  :func:`on_request_end` run when the request ends, however it ends.

Slow or incomplete headers and idle connections are the HTTP server's business
(``service.api.server``), before the app sees a request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import TopiaryError
from service.api.auth import KEY_HASH, TENANT, PresentedKey, presented_key
from service.api.errors import error_response, too_large_body
from service.api.ratelimit import RequestRates
from service.config import Settings, is_loopback
from service.errors import NotFoundError, RateLimitedError
from service.tenants import DEFAULT_TENANT, TenantIdentity, get_or_create_tenant

_CLEANUPS = "topiary.cleanups"
_NO_STORE = (b"cache-control", b"no-store")
_API, _METRICS, _DOCS, _OPEN = "api", "metrics", "docs", "open"


def on_request_end(scope: Scope, callback: Callable[[], None]) -> None:
    """Run ``callback`` when the request ends (response sent, failed or disconnected)."""
    scope["state"].setdefault(_CLEANUPS, []).append(callback)


def _area(path: str) -> str:
    if path.startswith("/v1/") or path == "/v1":
        return _API
    if path == "/metrics":
        return _METRICS
    if path == "/openapi.json" or path == "/docs" or path.startswith("/docs/"):
        return _DOCS
    return _OPEN


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: dict[str, str]) -> None:
    content = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
        _NO_STORE, *((name.lower().encode(), value.encode()) for name, value in headers.items())]})
    await send({"type": "http.response.body", "body": content})


class ApiGuardMiddleware:
    """Keys, rates, body limits and response headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, engine: Engine,
                 body_limits: dict[str, int], default_body_limit: int) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        self.rates = RequestRates(settings)
        self.body_limits = body_limits
        self.default_body_limit = default_body_limit
        self.too_large = too_large_body(settings.max_upload_mb)
        self.default_tenant: TenantIdentity | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        limit = self.body_limits.get(scope["path"].rstrip("/"), self.default_body_limit)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await send_json(send, 413, self.too_large, {"Connection": "close"})
            return
        try:
            headers = await self._admit(scope, state)
        except TopiaryError as error:
            status, body, error_headers = error_response(error, scope)
            await send_json(send, status, body, error_headers)
            return
        extra = [_NO_STORE, *headers]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()),
                                      *(header for header in extra if header[0] not in present)]
            await send(message)

        try:
            await self.app(scope, _limited(receive, limit, self.settings.body_idle_timeout_seconds)
                           if _has_body(scope) else receive, send_with_headers)
        finally:
            for cleanup in state.pop(_CLEANUPS, ()):
                cleanup()

    async def _admit(self, scope: Scope, state: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """Refuse the request (raise) or return headers for its response."""
        area = _area(scope["path"])
        if area == _API:
            return await self._admit_api(scope, state)
        if area == _METRICS:
            if self.settings.metrics == "off":
                raise NotFoundError("metrics are off on this server (TOPIARY_METRICS)")
            if self.settings.metrics == "key" and self.settings.auth == "key":
                await self._authenticate_now(scope, state)
        elif area == _DOCS and self.settings.docs != "public":
            if self.settings.docs == "off":
                raise NotFoundError("the API documentation is off on this server "
                                    "(TOPIARY_DOCS)")
            client = scope.get("client")
            if not (client and is_loopback(client[0])):
                if scope["path"] != "/openapi.json":
                    raise NotFoundError("the API documentation is served to this machine "
                                        "only (TOPIARY_DOCS=loopback); /openapi.json answers "
                                        "any valid key")
                if self.settings.auth == "key":
                    await self._authenticate_now(scope, state)
        return []

    async def _admit_api(self, scope: Scope, state: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        if self.settings.auth == "none":
            if self.default_tenant is None:
                self.default_tenant = await run_in_threadpool(get_or_create_tenant, self.engine,
                                                              DEFAULT_TENANT)
            state[TENANT] = self.default_tenant
            identity = DEFAULT_TENANT
        else:
            key = presented_key(scope)
            state[KEY_HASH] = key
            identity = key.key_hash
        decision = await self.rates.hit(identity)
        headers = [(name.lower().encode(), value.encode())
                   for name, value in decision.headers.items()]
        if not decision.allowed:
            raise RateLimitedError(
                f"this API key sent more requests than its rate allows "
                f"({self.settings.rate_limit}, TOPIARY_RATE_LIMIT); wait "
                f"{decision.retry_after} s", retry_after=decision.retry_after,
                headers=decision.headers)
        if TENANT not in state and _has_body(scope):
            await self._authenticate_now(scope, state)
        return headers

    async def _authenticate_now(self, scope: Scope, state: dict[str, Any]) -> None:
        key = state.get(KEY_HASH)
        if not isinstance(key, PresentedKey):
            key = presented_key(scope)
            state[KEY_HASH] = key
        state[TENANT] = await run_in_threadpool(key.tenant_from, self.engine)


def _limited(receive: Receive, limit: int, idle_seconds: float) -> Receive:
    """``receive`` that ends the request when the body passes ``limit`` bytes (413) or
    pauses for ``idle_seconds`` (408)."""
    received = 0
    complete = False

    async def limited_receive() -> Message:
        nonlocal received, complete
        if complete:  # later calls wait for the client to leave, for as long as it stays
            return await receive()
        try:
            async with asyncio.timeout(idle_seconds):
                message = await receive()
        except TimeoutError:
            raise HTTPException(status_code=408, headers={"Connection": "close"}) from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(status_code=413, headers={"Connection": "close"})
            complete = not message.get("more_body", False)
        return message

    return limited_receive
