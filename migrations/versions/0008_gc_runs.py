"""gc runs recorded in the catalog, not in a file on the data root

``cloudimg gc`` added each run to ``<data-root>/gc-last-run.json`` for the servers'
``/metrics``; replicas over an object store share no data root, but they all share the
catalog. The totals start again from zero (Prometheus takes a counter that goes back
as a reset); the old file is left where it is and read by nothing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gc_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("runs_total", sa.Integer(), nullable=False),
        sa.Column("failed_runs_total", sa.Integer(), nullable=False),
        sa.Column("bytes_freed_total", sa.BigInteger(), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_duration_seconds", sa.Float(), nullable=False),
        sa.Column("last_run_bytes_freed", sa.BigInteger(), nullable=False),
        sa.Column("last_run_ok", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gc_runs")),
    )


def downgrade() -> None:
    op.drop_table("gc_runs")
