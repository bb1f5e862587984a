"""SQLAlchemy 2 plumbing: engines, the declarative base, scoped sessions, migrations.

No engine is created at import time. SQLite gets WAL, a busy timeout and
foreign keys on every connection; PostgreSQL gets pre-ping. Driver errors
leave :func:`session_scope` as :class:`service.errors.DatabaseError`.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    Result,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, ORMExecuteState, Session
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from service.config import private_folder
from service.errors import DatabaseError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "topiary_alembic_version"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_ID = 0x70_69_61_72_79

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of our tables (never Optuna's)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def affected_rows(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE executed through a session."""
    assert isinstance(result, CursorResult)
    return result.rowcount


def is_postgresql(bind: Engine | Connection | Session) -> bool:
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    return dialect.name == "postgresql"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _private_sqlite_file(path: Path) -> None:
    """Create a new SQLite file (and its folder) readable by its owner only: SQLite gives
    its WAL and shared-memory files the database file's mode."""
    if path.exists():
        return
    private_folder(path.parent)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def create_engine_for(url: str, **options: Any) -> Engine:
    """An engine for our database (or Optuna's), configured for its backend.

    Args:
        url: SQLAlchemy URL; for SQLite the parent folder is created.
        **options: passed to ``sqlalchemy.create_engine``.

    Returns:
        The engine; nothing is connected yet.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_file(Path(parsed.database).expanduser())
        options.setdefault("connect_args", {"check_same_thread": False,
                                            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = create_engine(parsed, **options)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    options.setdefault("pool_pre_ping", True)
    options.setdefault("connect_args", {"connect_timeout": 5})
    if "poolclass" not in options:
        options.setdefault("pool_size", 10)
        options.setdefault("max_overflow", 20)
    return create_engine(parsed, **options)


def _describe(error: SQLAlchemyError) -> str:
    cause = getattr(error, "orig", None) or error
    first_line = (str(cause).splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line}"


class _WriterQueue:
    """This process's SQLite writers, one at a time, in arrival order.

    SQLite lets one transaction write at a time and makes the others poll with
    sleeps of up to 100 ms, so under concurrent writes some starve for seconds.
    A session takes its engine's lock before its first write and gives it back
    after its commit or rollback; waiting on a lock is fair and wakes at once.
    Other processes (the workers) still meet SQLite's busy timeout.
    """

    _locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
    _guard = threading.Lock()

    @classmethod
    def attach(cls, session: Session, engine: Engine) -> None:
        if engine.dialect.name != "sqlite":
            return
        with cls._guard:
            lock = cls._locks.setdefault(engine, threading.Lock())
        session.info["writer_lock"] = lock

    @staticmethod
    def enter(session: Session) -> None:
        lock = session.info.get("writer_lock")
        if lock is None or session.info.get("writing"):
            return
        # Connection first, lock second, always: a lock holder never waits for the pool.
        session.connection()
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise DatabaseError("the SQLite database stayed locked by another writer of this "
                                "process; retry, or move to PostgreSQL for concurrent writers")
        session.info["writing"] = True

    @staticmethod
    def leave(session: Session) -> None:
        if session.info.pop("writing", False):
            session.info["writer_lock"].release()


@event.listens_for(Session, "do_orm_execute")
def _before_write_statement(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        _WriterQueue.enter(state.session)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _context: Any, _instances: Any) -> None:
    _WriterQueue.enter(session)


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _after_transaction(session: Session) -> None:
    _WriterQueue.leave(session)


def read_only_engine(engine: Engine) -> Engine:
    """``engine`` for sessions that only read: on PostgreSQL its connections run in
    autocommit (no BEGIN and COMMIT round trips; psycopg switches client-side, and the
    pool puts the default back on return). SQLite starts no transaction for a read anyway."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def request_session(engine: Engine) -> Session:
    """A session for a caller that commits and closes it itself (with :func:`close_session`);
    it takes this process's SQLite writer turn like :func:`session_scope`'s."""
    session = Session(engine, expire_on_commit=False)
    _WriterQueue.attach(session, engine)
    return session


def close_session(session: Session) -> None:
    """Close a :func:`request_session`: what it did not commit is rolled back, and its
    SQLite writer turn is given back."""
    try:
        session.close()
    finally:
        _WriterQueue.leave(session)


def database_error(error: SQLAlchemyError) -> DatabaseError:
    """The ``DatabaseError`` a driver error leaves our code as."""
    return DatabaseError(f"the database could not complete the request ({_describe(error)}); "
                         "retry, and check TOPIARY_DATABASE_URL if it persists")


def write_connection(session: Session) -> Connection:
    """The session's connection for Core writes, after taking this process's SQLite writer turn.

    Core statements on the connection skip the ORM (and its per-statement cost)
    but also its events, which is where the turn is otherwise taken.
    """
    _WriterQueue.enter(session)
    return session.connection()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error.

    Args:
        engine: the database.

    Yields:
        The session; objects stay readable after the commit.

    Raises:
        DatabaseError: the driver failed (connection lost, constraint, lock timeout).
    """
    session = Session(engine, expire_on_commit=False)
    _WriterQueue.attach(session, engine)
    try:
        yield session
        session.commit()
    except SQLAlchemyError as error:
        session.rollback()
        raise database_error(error) from error
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
        _WriterQueue.leave(session)


def check_connection(engine: Engine) -> None:
    """Run ``SELECT 1``.

    Raises:
        DatabaseError: the database does not answer.
    """
    with session_scope(engine) as session:
        session.execute(text("SELECT 1"))


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring our tables to ``revision`` with Alembic (never touches Optuna's tables).

    Concurrent callers on PostgreSQL (several API replicas starting at once)
    are serialised by an advisory lock.

    Args:
        url: our database.
        revision: target revision, ``head`` by default.

    Raises:
        DatabaseError: the database refused the migration.
    """
    from alembic import command

    engine = create_engine_for(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"),
                                   {"lock": _MIGRATION_LOCK_ID})
            command.upgrade(_alembic_config(connection), revision)
    except SQLAlchemyError as error:
        raise DatabaseError(f"migrating {make_url(url).render_as_string()} failed: "
                            f"{_describe(error)}") from error
    finally:
        engine.dispose()
    logger.info("database migrated", extra={"revision": revision})


def downgrade(url: str, revision: str = "base") -> None:
    """Undo our migrations down to ``revision`` (``base`` drops every table of ours)."""
    from alembic import command

    engine = create_engine_for(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            command.downgrade(_alembic_config(connection), revision)
    finally:
        engine.dispose()



@contextmanager
def use_session(bind: Engine | Session) -> Iterator[Session]:
    """A session on ``bind``: the caller's own (it commits), or a new committing scope.

    Args:
        bind: an engine (a new transaction is opened and committed here) or a
            session (its transaction is used; the caller commits).

    Yields:
        The session to run statements on.
    """
    if isinstance(bind, Session):
        yield bind
    else:
        with session_scope(bind) as session:
            yield session
