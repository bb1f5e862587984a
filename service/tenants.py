"""Tenants and their API keys (stored as SHA-256 hashes; the key is shown once).

A key looks like ``tpy_<43 url-safe characters>``; its first 12 characters are
kept in clear as a prefix so that operators can name a key without knowing it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session

from service.db import affected_rows, use_session, utcnow
from service.errors import NotFoundError
from service.tables import ACTIVE_KEY, ApiKey, Tenant

KEY_PREFIX = "tpy_"
PREFIX_LENGTH = 12
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class TenantIdentity:
    """Who a request acts for."""

    id: int
    name: str


@dataclass(frozen=True)
class NewApiKey:
    """A freshly created key: ``key`` exists nowhere else, print it once."""

    key: str
    prefix: str
    tenant: TenantIdentity


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(bind: Engine | Session, name: str) -> TenantIdentity:
    """The tenant called ``name``, created when missing."""
    with use_session(bind) as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
        if tenant is None:
            tenant = Tenant(name=name, created_at=utcnow())
            session.add(tenant)
            session.flush()
        return TenantIdentity(tenant.id, tenant.name)


def create_api_key(bind: Engine | Session, tenant_name: str) -> NewApiKey:
    """Make a new key for a tenant (created when missing).

    Args:
        bind: engine or session.
        tenant_name: the tenant, e.g. a team's name.

    Returns:
        The key in clear (only here) and its prefix.
    """
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:PREFIX_LENGTH]
    with use_session(bind) as session:
        tenant = get_or_create_tenant(session, tenant_name)
        session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=prefix,
                           created_at=utcnow()))
        session.flush()
    return NewApiKey(key=key, prefix=prefix, tenant=tenant)


def revoke_api_key(bind: Engine | Session, key_or_prefix: str) -> int:
    """Revoke a key, given in full or by its prefix (every key with that prefix).

    Returns:
        How many keys were revoked.

    Raises:
        NotFoundError: no active key matches.
    """
    value = key_or_prefix.strip()
    with use_session(bind) as session:
        result = session.execute(
            update(ApiKey)
            .where(or_(ApiKey.key_hash == hash_key(value), ApiKey.prefix == value),
                   ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow()).execution_options(synchronize_session=False))
    if not affected_rows(result):
        raise NotFoundError(f"no active API key matches {value!r}; give the whole key or "
                            f"its {PREFIX_LENGTH}-character prefix")
    return affected_rows(result)


# Built once over the tables (Core): every request runs it, and building a statement,
# or passing it through the ORM, costs more than running it.
_TENANTS, _KEYS = Tenant.__table__.c, ApiKey.__table__.c
_ACTIVE_KEY = (select(_TENANTS.id, _TENANTS.name)
               .join_from(Tenant.__table__, ApiKey.__table__, _KEYS.tenant_id == _TENANTS.id)
               .where(ACTIVE_KEY))


def authenticate(session: Session, key: str) -> TenantIdentity | None:
    """The tenant of an active key, or None (unknown or revoked: checked on every call)."""
    return tenant_for_key_hash(session, hash_key(key))


def tenant_for_key_hash(session: Session, key_hash: str) -> TenantIdentity | None:
    """``authenticate`` for a key already hashed with ``hash_key``."""
    row = session.connection().execute(_ACTIVE_KEY, {"key_hash": key_hash}).one_or_none()
    return None if row is None else TenantIdentity(row.id, row.name)
