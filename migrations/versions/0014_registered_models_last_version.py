"""registered_models.last_version: version numbers are never reused

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 18:40:00

A name's next version was max(version) + 1, so when the model of its latest version was deleted
the next registration took that number again, and `iris@3` named another model than it had.
MLflow never reuses a version number (a deleted version is kept as deleted); this keeps the last
number given on the name's row instead. Backfilled from the versions that exist.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "registered_models",
        sa.Column("last_version", sa.Integer(), nullable=False, server_default="0"),
    )
    op.execute(
        "UPDATE registered_models SET last_version = COALESCE((SELECT MAX(version) FROM "
        "model_versions WHERE model_versions.registered_model_id = registered_models.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("registered_models") as batch_op:
        batch_op.drop_column("last_version")
