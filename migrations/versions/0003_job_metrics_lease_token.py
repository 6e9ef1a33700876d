"""job_metrics.lease_token: which attempt wrote each epoch

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 18:12:00

The audit that proves fencing: every metrics row names the lease token of the claim that wrote
it, so "epochs 1..k by attempt 1, k+1..E by attempt 2, nothing interleaved" is a query. Rows
written before this column existed read 0. ADD COLUMN needs no table copy on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "job_metrics",
        sa.Column("lease_token", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("job_metrics") as batch_op:
        batch_op.drop_column("lease_token")
