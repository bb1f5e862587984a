"""Who a request acts for: the API key it carries, checked against the database every time.

The key is read from ``Authorization: Bearer <key>`` by the guard middleware
(``service.api.guard``) before anything else; a header that cannot hold a key is
refused there without a query. Where the key is looked up depends on the request
(the guard's docstring says why): a request with a body is authenticated by the
guard before a byte of the body is read; a request without one is authenticated in
the worker-thread call that serves it, on the same connection (``deps.CommittingRoute``);
``GET /v1/jobs/{id}``, the route clients poll, checks it in the job's own query
(``deps.owned_job``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.types import Scope

from service.db import session_scope
from service.errors import AuthenticationError
from service.tenants import KEY_PREFIX, TenantIdentity, hash_key, tenant_for_key_hash

_KEY = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_\-]{16,128}")
NO_KEY = ("this request needs an API key: send 'Authorization: Bearer <key>'; an operator "
          "creates one with `topiary keys create --tenant NAME`")
UNKNOWN_KEY = ("the API key is unknown or revoked; ask an operator for a new one "
               "(`topiary keys create --tenant NAME`)")
#: ``scope["state"]`` keys the guard fills in.
KEY_HASH = "topiary.key_hash"
TENANT = "topiary.tenant"


@dataclass(frozen=True)
class PresentedKey:
    """A well-formed key a request presented, not yet looked up."""

    key_hash: str

    def tenant(self, session: Session) -> TenantIdentity:
        """The key's tenant, looked up on ``session``'s connection.

        Raises:
            AuthenticationError: the key is unknown or revoked.
        """
        tenant = tenant_for_key_hash(session, self.key_hash)
        if tenant is None:
            raise AuthenticationError(UNKNOWN_KEY)
        return tenant

    def tenant_from(self, engine: Engine) -> TenantIdentity:
        """``tenant`` in a short transaction of its own."""
        with session_scope(engine) as session:
            return self.tenant(session)


def presented_key(scope: Scope) -> PresentedKey:
    """The key of ``Authorization: Bearer <key>``.

    Raises:
        AuthenticationError: no such header, another scheme, or a value that is no key.
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").strip().partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key:
                break
            if not _KEY.fullmatch(key):
                raise AuthenticationError(UNKNOWN_KEY)
            return PresentedKey(hash_key(key))
    raise AuthenticationError(NO_KEY)
