"""datasets.tokens, datasets.max_token_id: token-list (sequences) datasets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 15:20:00

A dataset can hold documents of token ids (values + offsets in its features safetensors) instead
of a feature matrix. `tokens` counts the ids and `max_token_id` is the largest, so a submit can
check a network's category_encoding num_tokens without reading the arrays; both NULL for a
feature matrix, which every existing row is. ADD COLUMN needs no table copy on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("tokens", sa.BigInteger(), nullable=True))
    op.add_column("datasets", sa.Column("max_token_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch_op:
        batch_op.drop_column("max_token_id")
        batch_op.drop_column("tokens")
