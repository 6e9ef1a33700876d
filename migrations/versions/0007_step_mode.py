"""jobs and job_metrics: the step mode the steps ran as, and the precision observed per epoch

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 15:20:00

What ran is what is recorded: each epoch's row and its job carry the step mode ("eager",
"cuda_graph", "cuda_graph (emulated)", "eager (fallback)") and why eager when eager; each
epoch's row the precision its steps computed in (jobs.precision already exists). Nullable: rows
written before read NULL, "not recorded". ADD COLUMN needs no table copy on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "job_metrics"):
        op.add_column(table, sa.Column("step_mode", sa.String(30), nullable=True))
        op.add_column(table, sa.Column("step_mode_reason", sa.Text(), nullable=True))
    op.add_column("job_metrics", sa.Column("precision", sa.String(10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_metrics") as batch_op:
        batch_op.drop_column("precision")
        batch_op.drop_column("step_mode_reason")
        batch_op.drop_column("step_mode")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("step_mode_reason")
        batch_op.drop_column("step_mode")
