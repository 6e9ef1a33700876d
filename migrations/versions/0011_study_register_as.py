"""studies.register_as, studies.registered_version: the best model registered when a study ends

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 17:50:00

When a study completes, its best trial's model is registered under a model name (derived from
the study's name when it is created: app/services/registry.py's `name_for`) as that name's next
version, which the study then reports. Studies made before this revision have neither.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("register_as", sa.String(63), nullable=True))
    op.add_column("studies", sa.Column("registered_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_column("registered_version")
        batch_op.drop_column("register_as")
