"""jobs.warning: what makes a job's validation figures misleading, found at submit

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 15:00:00

A classification job whose validation_split rows (the last ones) hold a single class, or miss
classes present in training, says so here; NULL when nothing is wrong. ADD COLUMN needs no table
copy on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("warning", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("warning")
