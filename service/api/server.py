"""How ``topiary serve`` runs uvicorn: its HTTP protocol with a deadline for the headers,
and the connection limits and timeouts uvicorn has.

uvicorn times out idle keep-alive connections between requests
(``timeout_keep_alive``), but a connection that sends nothing, or part of a request
line or of its headers, stays open for ever. :class:`TimedHttpToolsProtocol` closes
(with 408) a connection whose request headers have not all arrived within
``TOPIARY_HEADER_TIMEOUT_SECONDS`` of its first byte (or of the connection), and
answers 431 to headers longer than ``MAX_HEADER_BYTES``. Bodies are the guard's
(``service.api.guard``: a pause longer than ``TOPIARY_BODY_IDLE_TIMEOUT_SECONDS``
ends the request). In front of all this a reverse proxy with its own timeouts is
the deployment (docker-compose.yml); these bounds hold without one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings, get_settings

MAX_HEADER_BYTES = 64 * 1024
#: uvicorn answers 503 beyond this many open connections (streams included).
CONNECTION_LIMIT = 2048
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; "
                     b"charset=utf-8\r\nconnection: close\r\ncontent-length: 37\r\n\r\n"
                     b"the request headers came in too late\n")
_TOO_LONG_RESPONSE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: "
                      b"text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: "
                      b"31\r\n\r\nthe request headers are too long\n")


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit for request headers.

    The deadline is not a timer per request (that would cost every request as much as
    its routing): one sweep a second per server closes the connections past it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = get_settings().header_timeout_seconds
        self._awaiting_headers = True
        self._headers_since: float | None = None
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._headers_since = self.loop.time()
        _sweep_connections_of(self)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._headers_since is None:
            self._headers_since = self.loop.time()  # a new request after keep-alive
        super().data_received(data)
        if self._awaiting_headers:  # still: all of ``data`` went to the headers
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._close_with(_TOO_LONG_RESPONSE)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._headers_since = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._awaiting_headers = True
        self._header_bytes = 0
        super().on_response_complete()  # arms uvicorn's keep-alive timeout

    def past_header_deadline(self, now: float) -> bool:
        return (self._awaiting_headers and self._headers_since is not None
                and now - self._headers_since > self.header_timeout)

    def close_for_lateness(self) -> None:
        self._close_with(_TIMEOUT_RESPONSE)

    def _close_with(self, response: bytes) -> None:
        self._awaiting_headers = False
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


def _sweep_connections_of(protocol: TimedHttpToolsProtocol) -> None:
    """Start the server's sweep of late headers, once per server."""
    state = protocol.server_state
    if getattr(state, "topiary_sweeping", False):
        return
    state.topiary_sweeping = True  # type: ignore[attr-defined]
    loop, interval = protocol.loop, min(1.0, protocol.header_timeout / 4)

    def sweep() -> None:
        now = loop.time()
        for connection in list(state.connections):
            if (isinstance(connection, TimedHttpToolsProtocol)
                    and connection.past_header_deadline(now)):
                connection.close_for_lateness()
        loop.call_later(interval, sweep)

    loop.call_later(interval, sweep)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` for ``settings`` (protocol, limits, timeouts)."""
    return {"host": settings.host, "port": settings.port, "http": TimedHttpToolsProtocol,
            "timeout_keep_alive": settings.keep_alive_seconds,
            "limit_concurrency": CONNECTION_LIMIT, "log_config": None, "access_log": False,
            "server_header": False}
