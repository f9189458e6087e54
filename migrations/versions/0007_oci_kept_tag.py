"""OCI: a kept push knows the tag it was pushed to

A pull by tag serves what was pushed only when it was pushed to that tag over ``/v2``
and is a container image or an image index; every other tag (a ``/reg`` upload, a
retag, a disk artifact pushed by oras or ``cloudimg push``) pulls as the generated
containerDisk of its disk, which KubeVirt and CDI boot. ``tag`` is NULL for rows kept
before this revision: their tags pull as the generated containerDisk (the same disk),
and the pushed manifests stay pullable by digest while their disk is held.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("oci_manifests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tag", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oci_manifests", schema=None) as batch_op:
        batch_op.drop_column("tag")
