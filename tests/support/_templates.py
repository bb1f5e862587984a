"""Migrated databases in a fraction of a migration: our tables are migrated once into a
template, which each test then copies.

PostgreSQL copies a database with ``CREATE DATABASE ... TEMPLATE`` (nobody may be
connected to the template meanwhile: :func:`service.db.migrate` leaves no connection
behind); an SQLite database is a file, copied as one.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.db import migrate
from tests.support._postgres import create_database, throwaway_database


def migrated_sqlite_template(folder: Path) -> Path:
    """Migrate a new SQLite file in ``folder``; return its path (copy it, never open it)."""
    path = folder / "template.db"
    migrate(f"sqlite:///{path}")
    # Fold the write-ahead log into the file, so that the file alone is the database.
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return path


def copy_sqlite(template: Path, destination: Path) -> str:
    """Copy a template file to ``destination``; return its SQLAlchemy URL."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, destination)
    return f"sqlite:///{destination}"


@contextmanager
def migrated_postgres_template(admin: str) -> Iterator[str]:
    """A migrated PostgreSQL database to copy with :func:`copy_postgres`; dropped on exit."""
    with throwaway_database(admin, "topiary_template") as url:
        migrate(url)
        yield url


def copy_postgres(admin: str, template: str, prefix: str = "topiary_test") -> str:
    """A new database copied from ``template``; return its URL (drop it with
    :func:`tests.support.drop_database`)."""
    return create_database(admin, prefix, template=template)
