"""datasets.features moved to the table's last column on SQLite

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 22:00:00

A dataset's features (up to ~1 GB) are inserted as `zeroblob(n)` and written in pieces with
SQLite's incremental blob I/O (app/blobs.py). SQLite builds a row's record in memory, zeros
included, unless the zeroblob ends the record: with `targets`, `sha256` and `created_at` after it,
every upload held two more whole copies of its features. SQLite can't move a column, so a new
last column takes the values and the old one is dropped (each step rewrites every row: once, on
upgrade). Its `x''` default is only there because ADD COLUMN ... NOT NULL needs one; inserts always
give a value. Postgres stores large values out of line whatever their place (and the upload goes
through COPY there): nothing to do. Downgrade leaves the order, which no reader depends on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.add_column(
        "datasets",
        sa.Column("features_last", sa.LargeBinary(), nullable=False, server_default=sa.text("x''")),
    )
    op.execute("UPDATE datasets SET features_last = features")
    op.execute("ALTER TABLE datasets DROP COLUMN features")
    op.execute("ALTER TABLE datasets RENAME COLUMN features_last TO features")


def downgrade() -> None:
    pass
