"""datasets.deleted_at: a deleted dataset that finished jobs or models still refer to

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 18:10:00

Jobs and models keep a foreign key to their dataset (provenance). Deleting a dataset they refer
to removes its arrays and marks the row deleted instead of breaking those keys; a dataset nothing
refers to is deleted outright. ADD COLUMN needs no table copy on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.drop_column("deleted_at")
