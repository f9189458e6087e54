"""An index of tags' metadata, for the metadata query of ``/reg/_query``

``tags.meta`` stays the record (generic JSON); ``tag_meta`` holds one row per key
(its value as text, None when longer than the index holds) and is rewritten with the
tag on every write. Filled here from the existing tags; the downgrade drops it (the
record is untouched). docs/architecture.md, "Queries over metadata", says why a side
table rather than JSON functions or ``jsonb``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here (not imported from the models): a migration keeps meaning what it meant.
_CHARS = 256
_BATCH = 1000


def _indexed(text: str) -> str:
    """NUL (which PostgreSQL's text columns refuse) as ``\\0``, ``\\`` doubled."""
    return text.replace("\\", "\\\\").replace("\x00", "\\0")


def _rows(tag_id: int, meta: Any) -> list[dict[str, Any]]:
    if isinstance(meta, str):  # a driver that hands JSON back as text
        meta = json.loads(meta)
    rows = []
    for key, value in (meta or {}).items():
        if len(key) > _CHARS:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        value = _indexed(text) if len(text) <= _CHARS else None
        rows.append({"tag_id": tag_id, "key": _indexed(key), "value": value})
    return rows


def upgrade() -> None:
    tag_meta = op.create_table(
        "tag_meta",
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=2 * _CHARS), nullable=False),
        sa.Column("value", sa.String(length=2 * _CHARS), nullable=True),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tags.id"], name=op.f("fk_tag_meta_tag_id_tags"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tag_id", "key", name=op.f("pk_tag_meta")),
    )
    op.create_index("ix_tag_meta_key_value", "tag_meta", ["key", "value", "tag_id"])
    tags = sa.table("tags", sa.column("id", sa.Integer()), sa.column("meta", sa.JSON()))
    connection = op.get_bind()
    batch: list[dict[str, Any]] = []
    for tag_id, meta in connection.execute(sa.select(tags.c.id, tags.c.meta)).all():
        batch.extend(_rows(tag_id, meta))
        if len(batch) >= _BATCH:
            connection.execute(sa.insert(tag_meta), batch)
            batch = []
    if batch:
        connection.execute(sa.insert(tag_meta), batch)


def downgrade() -> None:
    op.drop_index("ix_tag_meta_key_value", table_name="tag_meta")
    op.drop_table("tag_meta")
