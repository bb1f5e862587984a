"""Latency runtimes and device models: what a job is timed in and on, what a worker has.

jobs.latency_runtime (latency.runtime; existing jobs were timed in eager PyTorch),
jobs.device_model (the device model the baseline's latency was timed on) and
workers.runtimes (the runtimes a worker can time in).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("latency_runtime", sa.String(length=16),
                                    server_default="torch", nullable=False))
    op.add_column("jobs", sa.Column("device_model", sa.String(length=255), nullable=True))
    op.add_column("workers", sa.Column("runtimes", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "runtimes")
    op.drop_column("jobs", "device_model")
    op.drop_column("jobs", "latency_runtime")
