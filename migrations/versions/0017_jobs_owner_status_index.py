"""ix_jobs_owner_status: the claim counts a key's running and older queued jobs on an index

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 22:15:00

The claim's fair share counts, for each keyed candidate, its key's jobs on workers and its
key's claimable queued jobs older than it, each up to the per-key cap (app/queue/store.py).
With only ix_jobs_owner_id those counts read every job the key ever had, finished ones
included; on (owner_id, status, created_at) each reads at most the cap's worth of rows.
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_status", "jobs", ["owner_id", "status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_status", table_name="jobs")
