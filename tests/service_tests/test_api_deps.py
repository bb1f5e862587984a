"""Routes never commit: a ``CommittingRoute`` commits the session in the route's own thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.deps import CommittingRoute


class RecordingSession(Session):
    """A session without a database that remembers in which thread it committed."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_threads: list[int] = []

    def commit(self) -> None:
        self.commit_threads.append(threading.get_ident())
        super().commit()


sessions: list[RecordingSession] = []


def request_session() -> Iterator[Session]:
    session = RecordingSession()
    sessions.append(session)
    yield session


RequestSession = Annotated[Session, Depends(request_session, scope="function")]


def test_the_session_commits_in_the_route_thread_and_never_after_an_error() -> None:
    sessions.clear()
    route_threads: list[int] = []
    router = APIRouter(route_class=CommittingRoute)

    @router.post("/write")
    def write(session: RequestSession) -> dict[str, bool]:
        route_threads.append(threading.get_ident())
        return {"ok": True}

    @router.post("/fail")
    def fail(session: RequestSession) -> dict[str, bool]:
        raise RuntimeError("the route failed")

    app = FastAPI()
    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/write").json() == {"ok": True}
        assert client.post("/fail").status_code == 500
    written, failed = sessions
    assert written.commit_threads == route_threads  # once, in the route's own thread
    assert failed.commit_threads == []
    assert app.openapi()["paths"]["/write"]["post"]["operationId"] == "write_write_post"
