"""study_events.trial_number, study_events.epoch: which trial's epoch an epoch event tells

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 18:30:00

A trial's last epoch arrives with its finished job, not through the per-epoch report, so when the
trial ends the study checks whether that epoch was told already. The check read every epoch
event of the study (trials x epochs rows) per trial end; with the trial and epoch as columns
and an index on (study_id, trial_number, epoch) it reads at most one row. Existing epoch events
are filled in from their JSON.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("study_events", sa.Column("trial_number", sa.Integer(), nullable=True))
    op.add_column("study_events", sa.Column("epoch", sa.Integer(), nullable=True))
    events = sa.table(
        "study_events",
        sa.column("study_id", sa.String),
        sa.column("seq", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("data", sa.JSON),
        sa.column("trial_number", sa.Integer),
        sa.column("epoch", sa.Integer),
    )
    bind = op.get_bind()
    told = bind.execute(
        sa.select(events.c.study_id, events.c.seq, events.c.data).where(events.c.kind == "epoch")
    ).all()
    for study_id, seq, data in told:
        bind.execute(
            events.update()
            .where(events.c.study_id == study_id, events.c.seq == seq)
            .values(trial_number=(data or {}).get("number"), epoch=(data or {}).get("epoch"))
        )
    op.create_index(
        "ix_study_events_trial_epoch", "study_events", ["study_id", "trial_number", "epoch"]
    )


def downgrade() -> None:
    op.drop_index("ix_study_events_trial_epoch", table_name="study_events")
    with op.batch_alter_table("study_events") as batch_op:
        batch_op.drop_column("epoch")
        batch_op.drop_column("trial_number")
