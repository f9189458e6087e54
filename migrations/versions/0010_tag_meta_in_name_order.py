"""The metadata index hands out tags in name order: ``tag_meta`` carries the names

Each row gains copies of its tag's names (repository, image, tag; names never change),
and the index on (key, value, tag) gives way to (key, value, repo, image, tag, tag id)
and (key, repo, image, tag, tag id): a page of ``/reg/_query`` is then one range of one index,
already in the answer's order, instead of every match joined and sorted or every tag
walked by name (docs/architecture.md, "Queries over metadata"). The table is derived
from ``tags.meta``, so both directions drop it and fill it again from the tags.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here (not imported from the models): a migration keeps meaning what it meant.
_CHARS = 256
_BATCH = 1000


def _indexed(text: str) -> str:
    """NUL (which PostgreSQL's text columns refuse) as ``\\0``, ``\\`` doubled."""
    return text.replace("\\", "\\\\").replace("\x00", "\\0")


def _rows(tag_id: int, meta: Any, names: dict[str, str] | None) -> list[dict[str, Any]]:
    if isinstance(meta, str):  # a driver that hands JSON back as text
        meta = json.loads(meta)
    rows = []
    for key, value in (meta or {}).items():
        if len(key) > _CHARS:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        value = _indexed(text) if len(text) <= _CHARS else None
        rows.append({"tag_id": tag_id, "key": _indexed(key), "value": value, **(names or {})})
    return rows


def _create(with_names: bool) -> sa.Table:
    columns: list[SchemaItem] = [
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=2 * _CHARS), nullable=False),
        sa.Column("value", sa.String(length=2 * _CHARS), nullable=True),
    ]
    if with_names:
        columns += [
            sa.Column("repo", sa.String(length=63), nullable=False),
            sa.Column("image", sa.String(length=63), nullable=False),
            sa.Column("tag", sa.String(length=128), nullable=False),
        ]
    table = op.create_table(
        "tag_meta",
        *columns,
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tags.id"], name=op.f("fk_tag_meta_tag_id_tags"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tag_id", "key", name=op.f("pk_tag_meta")),
    )
    if with_names:
        op.create_index(
            "ix_tag_meta_key_value_names",
            "tag_meta",
            ["key", "value", "repo", "image", "tag", "tag_id"],
        )
        op.create_index(
            "ix_tag_meta_key_names", "tag_meta", ["key", "repo", "image", "tag", "tag_id"]
        )
    else:
        op.create_index("ix_tag_meta_key_value", "tag_meta", ["key", "value", "tag_id"])
    return table


def _fill(tag_meta: sa.Table, with_names: bool) -> None:
    tags = sa.table(
        "tags",
        sa.column("id", sa.Integer()),
        sa.column("image_id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("meta", sa.JSON()),
    )
    images = sa.table(
        "images",
        sa.column("id", sa.Integer()),
        sa.column("repository_id", sa.Integer()),
        sa.column("name", sa.String()),
    )
    repositories = sa.table(
        "repositories", sa.column("id", sa.Integer()), sa.column("name", sa.String())
    )
    every = (
        sa.select(tags.c.id, tags.c.meta, repositories.c.name, images.c.name, tags.c.name)
        .join(images, images.c.id == tags.c.image_id)
        .join(repositories, repositories.c.id == images.c.repository_id)
    )
    connection = op.get_bind()
    batch: list[dict[str, Any]] = []
    for tag_id, meta, repo, image, tag in connection.execute(every).all():
        names = {"repo": repo, "image": image, "tag": tag} if with_names else None
        batch.extend(_rows(tag_id, meta, names))
        if len(batch) >= _BATCH:
            connection.execute(sa.insert(tag_meta), batch)
            batch = []
    if batch:
        connection.execute(sa.insert(tag_meta), batch)


def _rebuild(with_names: bool) -> None:
    op.drop_table("tag_meta")  # its indexes go with it
    _fill(_create(with_names), with_names)


def upgrade() -> None:
    _rebuild(with_names=True)


def downgrade() -> None:
    _rebuild(with_names=False)
