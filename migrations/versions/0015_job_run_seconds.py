"""jobs.run_seconds: a job's time on workers, all its attempts together

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 21:45:00

The time limit (training.max_seconds, FITSERVE_MAX_JOB_SECONDS) was measured from the current
attempt's claim, so a job retried after its worker died got the whole budget again on every
attempt. Each heartbeat and epoch now adds the time since the previous one to this column, and
the limit is checked against it. Jobs that ran before start from 0. ADD COLUMN needs no table
copy on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("run_seconds", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("run_seconds")
