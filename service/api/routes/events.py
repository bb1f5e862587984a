"""/v1/jobs/{id}/events: the job log, as Server-Sent Events or as a JSON list.

A stream holds no database connection while it waits: each poll (every
``POLL_SECONDS``) checks the key, reads the job's status and its new events in one
short transaction, in one worker-thread call. Each key may hold
``TOPIARY_MAX_STREAMS_PER_KEY`` open streams per API process (429 beyond), so one
tenant cannot tie up a process's connections and threads with streams.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine
from sse_starlette import EventSourceResponse, ServerSentEvent

from service import jobs
from service.api.auth import KEY_HASH, PresentedKey
from service.api.deps import EngineDep, PendingTenantDep, resolve_tenant
from service.api.guard import on_request_end
from service.api.schemas import ErrorPublic, EventPublic
from service.db import session_scope
from service.errors import NotFoundError, TooManyStreamsError
from service.jobs import Event, JobStatus
from service.tenants import DEFAULT_TENANT, TenantIdentity, tenant_for_key_hash

router = APIRouter(prefix="/v1/jobs", tags=["events"])
POLL_SECONDS = 0.5
PING_SECONDS = 15
REVOKED = {"code": "unauthenticated",
           "detail": "the API key was revoked while this stream was open; ask an operator "
                     "for a new one"}


class StreamSlots:
    """Open event streams per key in this process, at most ``per_key`` each."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, identity: str) -> Callable[[], None]:
        """Take a slot; returns what gives it back.

        Raises:
            TooManyStreamsError: ``identity`` holds ``per_key`` streams already.
        """
        with self._lock:
            if self._open[identity] >= self.per_key:
                raise TooManyStreamsError(
                    f"this API key already has {self.per_key} open event streams "
                    "(TOPIARY_MAX_STREAMS_PER_KEY); close one, or read the log with "
                    "?follow=false", retry_after=int(PING_SECONDS))
            self._open[identity] += 1

        def release() -> None:
            with self._lock:
                self._open[identity] -= 1
                if self._open[identity] <= 0:
                    del self._open[identity]

        return release


@dataclass(frozen=True)
class _Poll:
    revoked: bool
    status: str
    events: list[Event]


def _resume_point(after: int, last_event_id: str | None) -> int:
    if last_event_id and last_event_id.isdigit() and len(last_event_id) <= 18:
        return max(after, int(last_event_id))
    return after


def _poll(engine: Engine, key: PresentedKey | None, job_id: str, after: int) -> _Poll:
    """One short transaction: whether the key still works (keys can be revoked while a
    stream is open), the job's status, then its events after ``after``. Status first: a
    terminal status was committed with its own event, so the events read after it are
    complete."""
    with session_scope(engine) as session:
        if key is not None and tenant_for_key_hash(session, key.key_hash) is None:
            return _Poll(True, "", [])
        try:
            status = jobs.get_job(session, job_id).status
        except NotFoundError:  # deleted once it ended
            return _Poll(False, "deleted", [])
        return _Poll(False, status, jobs.list_events(session, job_id, after_id=after))


async def _follow(request: Request, engine: Engine, key: PresentedKey | None, job_id: str,
                  after: int) -> AsyncIterator[ServerSentEvent]:
    last = after
    while not await request.is_disconnected():
        poll = await run_in_threadpool(_poll, engine, key, job_id, last)
        if poll.revoked:
            yield ServerSentEvent(data=json.dumps(REVOKED), event="error")
            return
        for event in poll.events:
            last = event.id
            yield ServerSentEvent(data=EventPublic.from_row(event).model_dump_json(),
                                  event=event.kind, id=str(event.id))
        if poll.status == "deleted" or JobStatus(poll.status).is_terminal():
            yield ServerSentEvent(data=f'{{"status": "{poll.status}"}}', event="end")
            return
        await asyncio.sleep(POLL_SECONDS)


@router.get("/{job_id}/events", response_model=None, responses={
    200: {"content": {"text/event-stream": {}}, "description": "the log as SSE, or a list"},
    404: {"model": ErrorPublic}})
async def job_events(job_id: str, request: Request, tenant: PendingTenantDep, engine: EngineDep,
                     follow: bool = True, after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                     last_event_id: Annotated[str | None, Header()] = None) -> Response:
    """Events after ``after`` (or the ``Last-Event-ID``); ``follow=false`` returns a JSON list.

    When following, the stream ends with an ``end`` event once the job has ended.
    """
    start = _resume_point(after, last_event_id)
    events = await run_in_threadpool(_opening, engine, tenant, job_id, start, follow)
    if not follow:
        return JSONResponse([EventPublic.from_row(e).model_dump(mode="json") for e in events])
    key = request.scope["state"].get(KEY_HASH)
    slots: StreamSlots = request.app.state.stream_slots
    on_request_end(request.scope, slots.acquire(key.key_hash if key else DEFAULT_TENANT))
    return EventSourceResponse(_follow(request, engine, key, job_id, start), ping=PING_SECONDS)


def _opening(engine: Engine, tenant: TenantIdentity, job_id: str, after: int,
             follow: bool) -> list[Event]:
    """The key's tenant, its job, and (for ``follow=false``) the events, in one short
    transaction."""
    with session_scope(engine) as session:
        owner = resolve_tenant(tenant, session)
        jobs.get_job(session, job_id, owner.id)
        return [] if follow else jobs.list_events(session, job_id, after_id=after)
