"""Weights uploads: checked while still a temporary file, then kept per tenant (0600 files in
0700 folders), within the tenant's storage quota, until deleted."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.config import Settings, private_folder
from service.db import utcnow, write_connection
from service.errors import (
    InvalidTransitionError,
    NotFoundError,
    UploadQuotaError,
    UploadTooLargeError,
)
from service.jobs import ACTIVE_STATUSES, Job
from service.tables import Tenant, WeightsUpload, is_valid_id, new_id
from service.weights_check import inspect_weights

CHUNK = 1024 * 1024
_EXTENSIONS = {"safetensors": ".safetensors", "torch_state_dict": ".pt"}


def _safe_filename(filename: str | None) -> str:
    base = Path(filename or "weights").name
    return re.sub(r"[^\w.\-]+", "_", base)[:255] or "weights"


def _copy_with_digest(source: BinaryIO, target: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadTooLargeError(f"the upload is larger than the server's limit of "
                                          f"{limit / 1024 / 1024:g} MiB (TOPIARY_MAX_UPLOAD_MB)")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def store_upload(session: Session, settings: Settings, tenant_id: int, filename: str | None,
                 source: BinaryIO) -> WeightsUpload:
    """Check an uploaded weights file and keep it for the tenant.

    Args:
        session: our database (the caller commits).
        settings: for ``upload_dir`` and the size limit.
        tenant_id: the owner.
        filename: the client's name for the file (kept for display only).
        source: the uploaded bytes.

    Returns:
        The stored upload's row.

    Raises:
        UploadTooLargeError: above ``max_upload_mb``.
        UploadQuotaError: the tenant's uploads would pass ``upload_quota_mb``.
        UnsafeCheckpointError: a pickle that could run code.
        InvalidUploadError: neither safetensors nor a plain state dict, or damaged.
    """
    assert settings.upload_dir is not None
    staging = private_folder(settings.upload_dir / "incoming")
    temporary = staging / f"{uuid.uuid4().hex}.part"
    try:
        size, sha256 = _copy_with_digest(source, temporary, settings.max_upload_bytes)
        info = inspect_weights(temporary)
        # After the (slow) inspection: the tenant's lock is held until the commit.
        _check_quota(session, tenant_id, size, settings.upload_quota_bytes)
        upload_id = new_id()
        folder = private_folder(settings.upload_dir / str(tenant_id))
        final = folder / f"{upload_id}{_EXTENSIONS[info.format]}"
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    upload = WeightsUpload(id=upload_id, tenant_id=tenant_id, filename=_safe_filename(filename),
                           size=size, sha256=sha256, path=str(final), format=info.format,
                           tensor_count=info.tensor_count, created_at=utcnow())
    session.add(upload)
    try:
        session.flush()
    except Exception:
        final.unlink(missing_ok=True)
        raise
    return upload


def _check_quota(session: Session, tenant_id: int, size: int, quota: int) -> None:
    """Refuse ``size`` more bytes past the tenant's quota; serialises the tenant's uploads
    (its row locked on PostgreSQL, this process's writer turn on SQLite) until commit."""
    connection = write_connection(session)
    connection.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    used = connection.scalar(select(func.coalesce(func.sum(WeightsUpload.size), 0))
                             .where(WeightsUpload.tenant_id == tenant_id)) or 0
    if used + size > quota:
        raise UploadQuotaError(
            f"this upload ({size / 2**20:.1f} MiB) would take the tenant's stored weights to "
            f"{(used + size) / 2**20:.1f} MiB, over its quota of {quota / 2**20:g} MiB "
            "(TOPIARY_UPLOAD_QUOTA_MB); delete uploads it no longer needs with "
            "DELETE /v1/weights/{id}")


def delete_upload(session: Session, tenant_id: int, upload_id: str) -> Path:
    """Delete one of the tenant's uploads (the caller commits, then removes the file).

    Returns:
        The stored file's path.

    Raises:
        NotFoundError: no such upload for this tenant.
        InvalidTransitionError: an unfinished job of the tenant starts from it.
    """
    upload = get_upload(session, tenant_id, upload_id)
    users = [job_id for job_id, spec in session.execute(
        select(Job.id, Job.spec).where(Job.tenant_id == tenant_id,
                                       Job.status.in_([s.value for s in ACTIVE_STATUSES])))
        if (spec.get("model") or {}).get("weights") == upload.id]
    if users:
        raise InvalidTransitionError(
            f"weights upload {upload.id} is the starting point of unfinished job "
            f"{users[0]}; delete it once that job has ended (or cancel the job)",
            job_id=users[0], current=None, target="deleted")
    session.execute(delete(WeightsUpload).where(WeightsUpload.id == upload.id,
                                                WeightsUpload.tenant_id == tenant_id))
    return Path(upload.path)


def remove_upload_file(path: Path, upload_dir: Path) -> None:
    """Remove a deleted upload's file (only ever one under ``upload_dir``)."""
    resolved = path.resolve()
    if upload_dir.resolve() in resolved.parents:
        resolved.unlink(missing_ok=True)


def get_upload(session: Session, tenant_id: int | None, upload_id: str) -> WeightsUpload:
    """One upload; with ``tenant_id``, only the tenant's own.

    Raises:
        NotFoundError: no such upload for this tenant (the same error either way).
    """
    if not is_valid_id(upload_id):
        raise NotFoundError(f"weights upload {upload_id} not found")
    statement = select(WeightsUpload).where(WeightsUpload.id == upload_id)
    if tenant_id is not None:
        statement = statement.where(WeightsUpload.tenant_id == tenant_id)
    upload = session.scalars(statement).one_or_none()
    if upload is None:
        raise NotFoundError(f"weights upload {upload_id} not found")
    return upload
