"""OCI distribution: containerDisk digests of blobs; upload sessions; pushed manifests

Existing blobs start without containerDisk digests; the server computes them once per
blob in the background (or on the first pull).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("oci_layer", "oci_config", "oci_manifest")


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        for column in _COLUMNS:
            batch_op.add_column(sa.Column(column, sa.String(64), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_blobs_{column}"), [column], unique=False)
    op.create_table(
        "oci_uploads",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("repository", sa.String(63), nullable=False),
        sa.Column("image", sa.String(63), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blake3", sa.String(64), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oci_uploads")),
    )
    op.create_index(op.f("ix_oci_uploads_updated_at"), "oci_uploads", ["updated_at"], unique=False)
    op.create_index(op.f("ix_oci_uploads_sha256"), "oci_uploads", ["sha256"], unique=False)
    op.create_table(
        "oci_manifests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("repository", sa.String(63), nullable=False),
        sa.Column("image", sa.String(63), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("blob", sa.String(64), nullable=False),
        sa.Column("config_digest", sa.String(64), nullable=False),
        sa.Column("config", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oci_manifests")),
    )
    op.create_index(
        "ix_oci_manifests_name", "oci_manifests", ["repository", "image", "digest"], unique=False
    )
    op.create_index(op.f("ix_oci_manifests_blob"), "oci_manifests", ["blob"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_oci_manifests_blob"), table_name="oci_manifests")
    op.drop_index("ix_oci_manifests_name", table_name="oci_manifests")
    op.drop_table("oci_manifests")
    op.drop_index(op.f("ix_oci_uploads_sha256"), table_name="oci_uploads")
    op.drop_index(op.f("ix_oci_uploads_updated_at"), table_name="oci_uploads")
    op.drop_table("oci_uploads")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        for column in reversed(_COLUMNS):
            batch_op.drop_index(batch_op.f(f"ix_blobs_{column}"))
            batch_op.drop_column(column)
