"""tag history: every change of a tag recorded; retained entries hold their blob; immutable tags

Existing tags start with an empty history and are not immutable.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tag_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository", sa.String(63), nullable=False),
        sa.Column("image", sa.String(63), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("retained", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag_history")),
    )
    op.create_index(
        "ix_tag_history_name", "tag_history", ["repository", "image", "tag", "id"], unique=False
    )
    op.create_index(op.f("ix_tag_history_digest"), "tag_history", ["digest"], unique=False)
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("immutable", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_column("immutable")
    op.drop_index(op.f("ix_tag_history_digest"), table_name="tag_history")
    op.drop_index("ix_tag_history_name", table_name="tag_history")
    op.drop_table("tag_history")
