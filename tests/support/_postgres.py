"""The PostgreSQL server the tests and benchmarks use: does it answer, throwaway databases.

The server is named by ``TOPIARY_TEST_POSTGRES_URL`` (an admin URL; default
``postgres@127.0.0.1:5432``). Every database made here has a unique name, so
several test runs, xdist workers and benchmarks can share one server.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """The admin URL of the test server (``TOPIARY_TEST_POSTGRES_URL`` or the default)."""
    return os.environ.get("TOPIARY_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def postgres_unavailable(url: str, timeout: float = 3) -> str | None:
    """None when the server at ``url`` answers ``SELECT 1``, else the reason it does not."""
    engine = create_engine(url, connect_args={"connect_timeout": max(1, round(timeout))})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as error:  # noqa: BLE001 - any driver failure means "no server"
        return (str(error).splitlines() or [type(error).__name__])[0]
    finally:
        engine.dispose()


def postgres_answers(url: str, timeout: float = 3) -> bool:
    """Whether the server at ``url`` answers ``SELECT 1``."""
    return postgres_unavailable(url, timeout) is None


def _admin_engine(url: str) -> Engine:
    return create_engine(url, isolation_level="AUTOCOMMIT")


def _with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name`` (password kept)."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def create_database(admin: str, prefix: str = "topiary_test", template: str | None = None) -> str:
    """Create a database with a unique name, empty or a copy of ``template``; return its URL.

    Args:
        admin: the admin URL of the server.
        prefix: the start of the name (what made it, for whoever finds it left over).
        template: the URL of a database to copy (nobody may be connected to it).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{make_url(template).database}"' if template else ""
    engine = _admin_engine(admin)
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    finally:
        engine.dispose()
    return _with_database(admin, name)


def drop_database(admin: str, url: str, attempts: int = 1, pause: float = 3.0) -> None:
    """Drop the database of ``url``, cutting its connections; retried ``attempts`` times
    (a server that another test or benchmark is restarting answers again soon)."""
    name = make_url(url).database
    engine = _admin_engine(admin)
    try:
        for attempt in range(attempts):
            try:
                with engine.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(pause)
    finally:
        engine.dispose()


@contextmanager
def throwaway_database(admin: str, prefix: str = "topiary_test",
                       template: str | None = None) -> Iterator[str]:
    """:func:`create_database`, dropped on exit (its connections cut)."""
    url = create_database(admin, prefix, template)
    try:
        yield url
    finally:
        drop_database(admin, url, attempts=10)
