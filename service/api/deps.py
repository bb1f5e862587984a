"""Dependencies shared by the routes, as ``Annotated`` aliases (tests override them here)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import session_scope
from service.errors import AuthenticationError
from service.tenants import DEFAULT_TENANT, TenantIdentity, authenticate, get_or_create_tenant
from service.trials import StudyReader


# `async` because they do no I/O: FastAPI then calls them without a thread hop.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def get_study_reader(request: Request) -> StudyReader:
    return request.app.state.study_reader  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StudyReaderDep = Annotated[StudyReader, Depends(get_study_reader)]


_bearer = HTTPBearer(auto_error=False, description="an API key from `topiary keys create`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


@dataclass(frozen=True)
class AuthenticatedSession:
    """The request's session and the tenant its API key belongs to."""

    session: Session
    tenant: TenantIdentity


def authenticated_session(request: Request, engine: EngineDep, settings: SettingsDep,
                          credentials: Credentials) -> Iterator[AuthenticatedSession]:
    """One transaction per request, opened and authenticated in one worker-thread call.

    FastAPI runs every sync dependency in a thread of its pool, and each such hop
    costs about as much CPU as the authentication query itself; opening the session
    and checking the key together saves one per request. Routes never commit: on a
    ``CommittingRoute`` the transaction commits as soon as the route function returns,
    in its thread; otherwise when this dependency closes, before the response is
    sent. An error rolls it back.

    Raises:
        AuthenticationError: no key, or an unknown or revoked one (checked every time).
    """
    with session_scope(engine) as session:
        yield AuthenticatedSession(session, _tenant(request, session, settings, engine,
                                                    credentials))


def _tenant(request: Request, session: Session, settings: Settings, engine: Engine,
            credentials: HTTPAuthorizationCredentials | None) -> TenantIdentity:
    if settings.auth == "none":
        tenant: TenantIdentity | None = getattr(request.app.state, "default_tenant", None)
        if tenant is None:
            # Its own committed transaction: the request's session stays read-only.
            tenant = get_or_create_tenant(engine, DEFAULT_TENANT)
            request.app.state.default_tenant = tenant
        return tenant
    if credentials is None:
        raise AuthenticationError("this request needs an API key: send 'Authorization: Bearer "
                                  "<key>'; an operator creates one with `topiary keys create "
                                  "--tenant NAME`")
    tenant = authenticate(session, credentials.credentials)
    if tenant is None:
        raise AuthenticationError("the API key is unknown or revoked; ask an operator for a "
                                  "new one (`topiary keys create --tenant NAME`)")
    return tenant


Authenticated = Annotated[AuthenticatedSession,
                          Depends(authenticated_session, scope="function")]


# `async` accessors of the one dependency above: no thread hop, no second session.
async def get_session(authenticated: Authenticated) -> Session:
    return authenticated.session


async def current_tenant(authenticated: Authenticated) -> TenantIdentity:
    return authenticated.tenant


SessionDep = Annotated[Session, Depends(get_session)]
CurrentTenant = Annotated[TenantIdentity, Depends(current_tenant)]


class CommittingRoute(APIRoute):
    """A route whose request session commits when the route function returns, in its thread.

    The dependency's own exit would commit one thread hop later, after the response
    is serialised (another hop): row locks (the tenant row on submission) and SQLite's
    writer turn would be held across both. A route that raises commits nothing; the
    dependency rolls its transaction back. ``async`` routes are left as they are.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _commit_on_return(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _commit_on_return(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the route's parameters through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        result = endpoint(*args, **kwargs)
        for value in kwargs.values():
            if isinstance(value, Session):
                value.commit()
        return result

    return run
