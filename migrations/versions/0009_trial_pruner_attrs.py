"""study_trials.pruner_attrs: what the pruner recorded on each trial

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 16:15:00

Successive halving and Hyperband decide from the value every trial had when it reached each
rung, which Optuna keeps as the trial's system attributes. fitserve asks its pruners over an
in-memory replay of its own rows, so those values are stored with the trial and replayed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("study_trials", sa.Column("pruner_attrs", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("study_trials") as batch_op:
        batch_op.drop_column("pruner_attrs")
