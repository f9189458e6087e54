"""image inspection: each blob records its detected format, virtual size and any block

Rows stored before this revision have ``inspected_at`` NULL until ``cloudimg fsck``
inspects them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("format", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("virtual_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("partition_table", sa.String(8), nullable=True))
        batch_op.add_column(sa.Column("inspected_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("blocked_rule", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        for column in (
            "blocked_at",
            "blocked_rule",
            "inspected_at",
            "partition_table",
            "virtual_size",
            "format",
        ):
            batch_op.drop_column(column)
