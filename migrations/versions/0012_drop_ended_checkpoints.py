"""Delete the checkpoints of jobs that have ended

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 18:00:00

A checkpoint (weights + optimizer state) exists to resume a job; the statements that end a job
now delete it in the same transaction (app/queue/store.py). This removes those that jobs ended
before kept: 571 MiB each for a 50 M-parameter network. Metrics and models are untouched.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM job_checkpoints WHERE job_id IN "
        "(SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled'))"
    )


def downgrade() -> None:
    pass  # what was deleted can't come back, and nothing needs it
