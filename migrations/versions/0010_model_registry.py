"""Model names: registered_models, model_versions, model_aliases; jobs.register_as

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 15:30:00

A key's trained models can be registered under a name ([a-z0-9][a-z0-9._-]{0,62}, unique per
key) as versions 1, 2, ...; aliases (production, staging...) point at one version and move with
one UPDATE. A job submitted with register_as registers its model when it succeeds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("register_as", sa.String(63), nullable=True))
    op.create_table(
        "registered_models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_index("ix_registered_models_owner_id", "registered_models", ["owner_id"])
    # One name per owner; the keyless owner (NULL) included, which a plain UNIQUE would not be.
    op.create_index(
        "uq_registered_models_owner_name",
        "registered_models",
        [sa.text("coalesce(owner_id, '')"), "name"],
        unique=True,
    )
    op.create_table(
        "model_versions",
        sa.Column(
            "registered_model_id",
            sa.String(32),
            sa.ForeignKey("registered_models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.CheckConstraint("version >= 1", name="ck_model_versions_version"),
    )
    op.create_index("ix_model_versions_model_id", "model_versions", ["model_id"])
    op.create_table(
        "model_aliases",
        sa.Column(
            "registered_model_id",
            sa.String(32),
            sa.ForeignKey("registered_models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alias", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.ForeignKeyConstraint(
            ["registered_model_id", "version"],
            ["model_versions.registered_model_id", "model_versions.version"],
            name="fk_model_aliases_version_model_versions",
        ),
    )


def downgrade() -> None:
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
    op.drop_table("registered_models")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("register_as")
