"""The tenancy tables (tenants, API keys, weights uploads) and the ids of every table.

Our tables are SQLAlchemy 2 ``Mapped`` classes; Alembic migrates them, never
Optuna's. The job tables (jobs, events, artifacts, participants, workers) are
``service.jobs``'s own; they import this module, never the other way round.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, and_, bindparam
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, UTCDateTime, utcnow


def new_id() -> str:
    """A random 32-hex-digit identifier (jobs, workers, uploads): not guessable, not ordered."""
    return uuid.uuid4().hex


_ID = re.compile(r"[0-9a-f]{32}")


def is_valid_id(value: str) -> bool:
    """Whether ``value`` could be an id made by ``new_id`` (anything else exists nowhere)."""
    return _ID.fullmatch(value) is not None


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Written when a job is submitted: the row lock serialises one tenant's submissions,
    # which keeps the concurrent-job cap exact.
    last_submission_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The daily job quota: jobs submitted since the current 24-hour window began (counted
    # here, not from the jobs table, so that deleting jobs gives no quota back).
    quota_day_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    quota_day_jobs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tenant: Mapped[Tenant] = relationship(lazy="joined")


#: The condition an API key authenticates on: its hash is the presented key's (bound as
#: ``key_hash``) and it is not revoked. The key lookup (``service.tenants``) and the job
#: read that checks its key (``service.jobs.get_job_for_key``) both use this one.
ACTIVE_KEY = and_(ApiKey.__table__.c.key_hash == bindparam("key_hash"),
                  ApiKey.__table__.c.revoked_at.is_(None))


class WeightsUpload(Base):
    __tablename__ = "weights_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    tensor_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
