"""Large values inserted into the database in pieces, never joined or bound whole.

A dataset's features are one value of up to ~1 GB, made of a safetensors header and the array's
own buffer (`Blob`). Bound as an ordinary parameter, the value is copied whole with the GIL held
(sqlite3 copies a bound blob as it binds it; the bytes had to be joined first), and held twice
more: SQLite builds the row's record in memory, libpq its message. `insert_with_blob` writes it
in `CHUNK_BYTES` pieces instead, so no copy of the whole value exists and no step holds the GIL
for longer than one chunk's copy:

- SQLite: the row is inserted with `zeroblob(n)` in the column and the pieces are written into it
  with sqlite3's incremental blob I/O (`Connection.blobopen`). SQLite leaves a zeroblob unbuilt
  only when it ends the row's record, so the column must be the table's last (migration 0016).
  The commit leaves the value in the WAL: copying it into the database file (SQLite's automatic
  checkpoint, ~0.4 s for 72 MB) is left to `app.db.checkpoint`, which the caller runs later.
- Postgres: the pieces are sent with COPY (binary) into a temporary table, and the INSERT takes
  the value from there.

Both happen in the session's transaction: a failure rolls the row back with the rest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any

from sqlalchemy import LargeBinary, column, func, literal_column, select, table
from sqlalchemy.orm import Session

from app.db import defer_checkpoint

CHUNK_BYTES = 1 << 20  # per write: ~0.1-1 ms of copying with the GIL held
# A one-column binary COPY: signature, flags, header extension length; one tuple of one field;
# the trailer (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format").
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_STAGING = table("fitserve_blob", column("data", LargeBinary))


class Blob:
    """A value kept as the buffers it is made of (bytes, or a C-contiguous array's memory),
    referenced, not copied."""

    def __init__(self, *pieces: Any) -> None:
        self.pieces = [memoryview(p).cast("B") for p in pieces]

    def __len__(self) -> int:
        return sum(len(p) for p in self.pieces)

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[memoryview]:
        for piece in self.pieces:
            for start in range(0, len(piece), size):
                yield piece[start : start + size]

    def update(self, digest: hashlib._Hash) -> None:
        """Feeds the value to a hash (hashlib releases the GIL over big buffers)."""
        for piece in self.pieces:
            digest.update(piece)

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)


def insert_with_blob(session: Session, row: Any, name: str, blob: Blob) -> None:
    """Adds `row` and flushes it with its column `name` holding `blob`, written in pieces (see
    the module's docstring). The ORM attribute is left expired: reading it loads the value."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        _insert_sqlite(session, row, name, blob)
    elif dialect == "postgresql":
        _insert_postgres(session, row, name, blob)
    else:
        raise NotImplementedError(f"no streamed insert for {dialect}")


def _insert_sqlite(session: Session, row: Any, name: str, blob: Blob) -> None:
    setattr(row, name, func.zeroblob(len(blob)))
    session.add(row)
    session.flush()
    table = row.__table__
    (key,) = table.primary_key.columns
    rowid = session.scalar(
        select(literal_column("rowid")).select_from(table).where(key == getattr(row, key.key))
    )
    with _driver(session).blobopen(table.name, name, rowid) as out:
        for chunk in blob.chunks():
            out.write(chunk)
    defer_checkpoint(session.connection())


def _insert_postgres(session: Session, row: Any, name: str, blob: Blob) -> None:
    postgres = _driver(session)
    with postgres.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE fitserve_blob (data bytea NOT NULL) ON COMMIT DROP")
        with cursor.copy("COPY fitserve_blob (data) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_COPY_HEADER + struct.pack("!hi", 1, len(blob)))
            for chunk in blob.chunks():
                copy.write(chunk)
            copy.write(_COPY_TRAILER)
    setattr(row, name, select(_STAGING.c.data).scalar_subquery())
    session.add(row)
    session.flush()
    with postgres.cursor() as cursor:
        cursor.execute("DROP TABLE fitserve_blob")


def _driver(session: Session) -> Any:
    """The DB-API connection under the session's transaction (sqlite3's or psycopg's)."""
    connection = session.connection().connection.driver_connection
    assert connection is not None
    return connection
