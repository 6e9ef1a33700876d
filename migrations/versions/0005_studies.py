"""studies and study_trials: hyperparameter searches whose trials are ordinary jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 15:10:00

A study holds the base spec, the search space and the objective; each trial row names the job
that trains its sampled params. Samplers and pruners (Optuna) are asked over these rows, so
Optuna's own storage tables are not created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("network", sa.JSON(), nullable=False),
        sa.Column("training", sa.JSON(), nullable=False),
        sa.Column("search_space", sa.JSON(), nullable=False),
        sa.Column("objective_metric", sa.String(length=20), nullable=False),
        sa.Column("direction", sa.String(length=10), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("sampler", sa.String(length=20), nullable=False),
        sa.Column("pruner", sa.String(length=30), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'cancelled')", name=op.f("ck_studies_status")
        ),
        sa.CheckConstraint(
            "direction IN ('minimize', 'maximize')", name=op.f("ck_studies_direction")
        ),
        sa.CheckConstraint("n_trials >= 1 AND max_parallel >= 1", name=op.f("ck_studies_counts")),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["api_keys.id"], name=op.f("fk_studies_owner_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_studies_dataset_id_datasets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_index(op.f("ix_studies_owner_id"), "studies", ["owner_id"])
    op.create_index(op.f("ix_studies_dataset_id"), "studies", ["dataset_id"])
    op.create_table(
        "study_trials",
        sa.Column("study_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("grid_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("pruned_at_epoch", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('running', 'complete', 'pruned', 'failed', 'cancelled')",
            name=op.f("ck_study_trials_state"),
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_study_trials_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_study_trials_job_id_jobs")),
        sa.PrimaryKeyConstraint("study_id", "number", name=op.f("pk_study_trials")),
        sa.UniqueConstraint("job_id", name=op.f("uq_study_trials_job_id")),
    )


def downgrade() -> None:
    op.drop_table("study_trials")
    op.drop_index(op.f("ix_studies_dataset_id"), table_name="studies")
    op.drop_index(op.f("ix_studies_owner_id"), table_name="studies")
    op.drop_table("studies")
