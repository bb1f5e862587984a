"""The daily job quota: each tenant's jobs of the current 24-hour window.

tenants.quota_day_started_at (when the window began) and tenants.quota_day_jobs
(jobs submitted in it; existing tenants start a fresh window at their next job).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("quota_day_started_at", sa.DateTime(timezone=True),
                                       nullable=True))
    op.add_column("tenants", sa.Column("quota_day_jobs", sa.Integer(), server_default="0",
                                       nullable=False))


def downgrade() -> None:
    op.drop_column("tenants", "quota_day_jobs")
    op.drop_column("tenants", "quota_day_started_at")
