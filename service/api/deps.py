"""Dependencies shared by the routes, as ``Annotated`` aliases (tests override them here)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from service.api.auth import KEY_HASH, TENANT, PresentedKey, presented_key
from service.config import Settings
from service.db import close_session, database_error, request_session
from service.errors import NotFoundError
from service.jobs import Job, JobRead, LiveWorkers, get_job, get_job_for_key
from service.tenants import TenantIdentity
from service.trials import StudyReader

#: Methods that only read: their session runs without a transaction (``read_engine``).
SAFE_METHODS = frozenset({"GET", "HEAD"})

# Marks an endpoint wrapped by ``CommittingRoute`` (FastAPI may copy a route when a
# router is included; the endpoint it keeps is the wrapped one).
_ONE_CALL = "__topiary_one_call__"


# `async` because they do no I/O: FastAPI then calls them without a thread hop.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def get_study_reader(request: Request) -> StudyReader:
    return request.app.state.study_reader  # type: ignore[no-any-return]


async def get_live_workers(request: Request) -> LiveWorkers:
    return request.app.state.live_workers  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
LiveWorkersDep = Annotated[LiveWorkers, Depends(get_live_workers)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StudyReaderDep = Annotated[StudyReader, Depends(get_study_reader)]


@dataclass(frozen=True)
class PendingTenant(TenantIdentity):
    """The tenant of a request without a body, looked up by ``CommittingRoute`` in the
    worker-thread call that serves the request (id -1 matches no row, should a route
    ever read it unresolved)."""

    key: PresentedKey | None = None
    engine: Engine | None = None

    def resolve(self, session: Session | None) -> TenantIdentity:
        assert self.key is not None and self.engine is not None
        return self.key.tenant(session) if session is not None else self.key.tenant_from(
            self.engine)


async def current_tenant(request: Request) -> TenantIdentity:
    """The tenant the request's key belongs to (see ``service.api.auth`` for where it is
    checked).

    Raises:
        AuthenticationError: no key, or an unknown or revoked one (checked every time).
    """
    tenant = await pending_tenant(request)
    if not isinstance(tenant, PendingTenant) or _serves_in_one_call(request.scope.get("route")):
        return tenant
    tenant = await run_in_threadpool(tenant.resolve, None)
    request.scope["state"][TENANT] = tenant
    return tenant


async def pending_tenant(request: Request) -> TenantIdentity:
    """The tenant if the guard knows it already, else a ``PendingTenant`` the route
    resolves (:func:`resolve_tenant`) in a worker-thread call it makes anyway.

    Raises:
        AuthenticationError: no well-formed key.
    """
    state = request.scope["state"]
    tenant: TenantIdentity | None = state.get(TENANT)
    if tenant is not None:
        return tenant
    key = state.get(KEY_HASH) or presented_key(request.scope)
    return PendingTenant(-1, "", key=key, engine=request.app.state.engine)


@dataclass(frozen=True)
class KeyTenant(PendingTenant):
    """A ``PendingTenant`` that ``CommittingRoute`` leaves pending: the route checks the key
    in the query it makes anyway (:func:`owned_job`)."""


async def key_tenant(request: Request) -> TenantIdentity:
    """``pending_tenant``, left to the route to look up (a ``KeyTenant``) when it is still
    pending: the route checks the key in the query it makes anyway (:func:`owned_job`).

    Raises:
        AuthenticationError: no well-formed key.
    """
    tenant = await pending_tenant(request)
    if type(tenant) is PendingTenant:
        return KeyTenant(tenant.id, tenant.name, key=tenant.key, engine=tenant.engine)
    return tenant


def owned_job(connection: Connection, job_id: str, tenant: TenantIdentity) -> Job | JobRead:
    """The job, if ``tenant`` owns it; for a ``KeyTenant`` the key is checked in the same
    statement (``service.jobs.get_job_for_key``, on ``connection``), and only a miss
    looks the key up alone, to answer 401 for a bad key and 404 for a job the key's tenant
    does not have.

    Raises:
        AuthenticationError: an unknown or revoked key.
        NotFoundError: no such job for this tenant (another tenant's: the same error).
    """
    if not isinstance(tenant, KeyTenant):
        with Session(bind=connection) as session:
            return get_job(session, job_id, tenant.id)
    assert tenant.key is not None
    job = get_job_for_key(connection, job_id, tenant.key.key_hash)
    if job is None:
        with Session(bind=connection) as session:
            tenant.resolve(session)
        raise NotFoundError(f"job {job_id} not found")
    return job


def resolve_tenant(tenant: TenantIdentity, session: Session | None) -> TenantIdentity:
    """``tenant``, looked up on ``session`` if it is still pending.

    Raises:
        AuthenticationError: an unknown or revoked key.
    """
    return tenant.resolve(session) if isinstance(tenant, PendingTenant) else tenant


async def get_session(request: Request) -> Session:
    """The request's session; it connects on first use, in the route's worker thread,
    where ``CommittingRoute`` commits and closes it (no other route may take one).

    A GET or HEAD reads through ``app.state.read_engine``: on PostgreSQL in autocommit,
    which saves the BEGIN and COMMIT round trips around its few SELECTs (each statement
    sees the latest committed rows, as separate requests would).

    Raises:
        TypeError: the route is not served by ``CommittingRoute``.
    """
    if not _serves_in_one_call(request.scope.get("route")):
        raise TypeError("SessionDep is for sync routes of a CommittingRoute router, which "
                        "commit and close it")
    state = request.app.state
    return request_session(state.read_engine if request.method in SAFE_METHODS
                           else state.engine)


SessionDep = Annotated[Session, Depends(get_session)]
CurrentTenant = Annotated[TenantIdentity, Depends(current_tenant)]
PendingTenantDep = Annotated[TenantIdentity, Depends(pending_tenant)]


class CommittingRoute(APIRoute):
    """A route served in one worker-thread call: authentication, the route, its commit.

    FastAPI would hand a sync route to the thread pool once for the route and once
    more to check its return value, and a sync dependency twice more (to open and to
    close it); each hand-off costs about as much CPU as the route's own query. Here the
    sync route becomes an ``async`` one that makes a single call to the pool, which

    * looks up the tenant of a request without a body (``PendingTenant``) on the
      request session's connection (a request never holds two pooled connections),
      unless the route does it in its own query (``KeyTenant``),
    * runs the route,
    * commits every session among its arguments as soon as it returns (row locks, such
      as the tenant row on submission, and SQLite's writer turn are not held while the
      response is serialised), or rolls them back when it raises, and closes them.

    Driver errors leave as ``DatabaseError``. ``async`` routes are left as they are.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _in_one_call(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _serves_in_one_call(route: Any) -> bool:
    return getattr(getattr(route, "endpoint", None), _ONE_CALL, False) is True


def _in_one_call(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the route's parameters through __wrapped__
    async def run(**kwargs: Any) -> Any:
        return await run_in_threadpool(_run_and_commit, endpoint, kwargs)

    setattr(run, _ONE_CALL, True)
    return run


def _run_and_commit(endpoint: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    sessions = [value for value in kwargs.values() if isinstance(value, Session)]
    try:
        for name, value in kwargs.items():
            if isinstance(value, PendingTenant) and not isinstance(value, KeyTenant):
                kwargs[name] = resolve_tenant(value, sessions[0] if sessions else None)
        result = endpoint(**kwargs)
        for session in sessions:
            session.commit()
        return result
    except SQLAlchemyError as error:
        raise database_error(error) from error
    finally:
        for session in sessions:
            close_session(session)  # rolls back what was not committed


def serve_directly(router: APIRouter, endpoint: Callable[..., Awaitable[Response]]) -> None:
    """Serve ``endpoint``'s route as plain ASGI: ``endpoint(request=..., **path_params)``
    builds its own ``Response``.

    FastAPI still matches the route and documents it from its signature and
    ``response_model``, but solves no parameters, opens no exit stacks and validates
    nothing per request: for the route clients poll, that machinery costs as much CPU
    as the route's own work. Path parameters arrive as the path's strings; exceptions
    reach the app's handlers (Starlette's ``ExceptionMiddleware``) as from any route.

    Raises:
        ValueError: ``endpoint`` is not the endpoint of one of ``router``'s routes.
    """
    routes = [route for route in router.routes
              if isinstance(route, APIRoute) and route.endpoint is endpoint]
    if len(routes) != 1:
        raise ValueError(f"{endpoint.__name__} is not the endpoint of one route")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(request=Request(scope, receive, send), **scope["path_params"])
        await response(scope, receive, send)

    routes[0].app = app
