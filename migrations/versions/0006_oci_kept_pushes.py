"""OCI: keep what was pushed (containerDisk layers, configs, image indexes)

A pushed manifest may now hold references on blobs besides its disk: its (compressed)
layer and its config, stored in the blob store like every blob and counted in
``blobs.refcount``. ``role`` says how a kept manifest is found: ``top`` (named by a tag
push; a pull by tag returns it), ``child`` (an image index's child: pulled by digest),
``pending`` (pushed by digest, no index took it yet; never served). Rows from 0005
keep their inline config; ``blob == ''`` rows were the pending ones.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("oci_manifests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(8), nullable=False, server_default="top"))
        batch_op.add_column(sa.Column("layer_blob", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("config_blob", sa.String(64), nullable=True))
        batch_op.create_index(batch_op.f("ix_oci_manifests_layer_blob"), ["layer_blob"])
        batch_op.create_index(batch_op.f("ix_oci_manifests_config_blob"), ["config_blob"])
    op.execute("UPDATE oci_manifests SET role = 'pending' WHERE blob = ''")


def downgrade() -> None:
    # 0005 knows no children nor kept blobs: such rows go (pending ones stay, blob ''),
    # and the layers and configs they held are freed by gc's refcount check.
    op.execute(
        "DELETE FROM oci_manifests WHERE role = 'child'"
        " OR layer_blob IS NOT NULL OR config_blob IS NOT NULL"
    )
    with op.batch_alter_table("oci_manifests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oci_manifests_config_blob"))
        batch_op.drop_index(batch_op.f("ix_oci_manifests_layer_blob"))
        batch_op.drop_column("config_blob")
        batch_op.drop_column("layer_blob")
        batch_op.drop_column("role")
