"""study_events: a study's event log, for its live event stream

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 15:40:00

Each event (the study's status, a trial's state, a trial's objective after an epoch) is numbered
per study under the study row's lock, so `GET /v1/studies/{id}/events` resumes exactly from a
Last-Event-ID.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_events",
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_study_events_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", "seq", name=op.f("pk_study_events")),
    )


def downgrade() -> None:
    op.drop_table("study_events")
