"""Alembic environment for our tables only (Optuna's live elsewhere, see DESIGN.md).

``service.db.migrate(url)`` passes an open connection in ``config.attributes``;
the ``alembic`` command line (``alembic.ini`` at the repository root) uses
``sqlalchemy.url`` when set there, else ``TOPIARY_DATABASE_URL`` through the settings.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from service import jobs, tables  # noqa: F401  (register the tables on Base.metadata)
from service.db import VERSION_TABLE, Base, create_engine_for

config = context.config
target_metadata = Base.metadata


def _ours(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate looks at our tables only, never at Optuna's or anyone else's."""
    if type_ == "table":
        return name in target_metadata.tables
    return True


def _configure(connection: Any) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      version_table=VERSION_TABLE, include_name=_ours,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from service.config import get_settings

        url = get_settings().database_url
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
