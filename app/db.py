"""Engines, sessions and schema upgrades.

SQLite is the embedded default: one file, WAL so readers never block the writer, a busy timeout
so writers queue instead of failing, and every transaction opened with BEGIN IMMEDIATE — SQLite
has a single writer, and taking the write lock up front means a read-then-write transaction can
never hit SQLITE_BUSY halfway through (a deferred BEGIN would upgrade its lock too late) — except
on connections from `connect_read_only`, whose transactions never write.
Postgres is the scale-out engine; `pool_pre_ping` lets the API recover from a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_WAL_AUTOCHECKPOINT = 1000  # pages: SQLite's default, restored after `defer_checkpoint`
_DEFERRED_CHECKPOINT = "fitserve_deferred_checkpoint"  # a pooled connection's info key
READ_ONLY = "fitserve_read_only"  # an execution option: see connect_read_only
POSTGRES_CONNECT_TIMEOUT_S = 5


def make_engine(url: str, *, connect_args: dict[str, Any] | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`; `connect_args` add to (or override) the driver options below."""
    if url.startswith("sqlite"):
        sqlite_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(url, connect_args={**sqlite_args, **(connect_args or {})}, **kwargs)
        _configure_sqlite(engine)
        return engine
    # A host that drops packets (rather than refusing) must not hang requests until the OS's
    # TCP timeout: fail the connect, and the API answers 503 within seconds.
    postgres_args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **(connect_args or {})}
    return create_engine(url, pool_pre_ping=True, connect_args=postgres_args, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own BEGIN is
        # deferred and emitted lazily, which is what we must avoid).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses no committed row
        cursor.close()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        if record.info.pop(_DEFERRED_CHECKPOINT, False):
            dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT}")

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def defer_checkpoint(connection: Connection) -> None:
    """This SQLite connection's next commit leaves its frames in the WAL, however many: SQLite's
    automatic checkpoint would copy them into the database file inside the commit (~0.4 s for a
    72 MB dataset, in the request). The setting is undone when the connection returns to the
    pool; run `checkpoint` once the answer is sent."""
    connection.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
    connection.connection.info[_DEFERRED_CHECKPOINT] = True


def checkpoint(engine: Engine) -> None:
    """Copies what the WAL holds into the database file (SQLite; PASSIVE: it waits for no reader
    or writer and leaves what it can't copy to the next checkpoint). Nothing on Postgres."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
    finally:
        raw.close()


def connect_read_only(engine: Engine) -> Connection:
    """A connection whose transactions only read. SQLite begins them deferred, so they never
    wait for the write lock (WAL lets them read beside a writer): a health probe must not queue
    behind a dataset upload's insert, which holds the lock for as long as it writes (~0.5 s for
    72 MB), nor wake up to 100 ms late from SQLite's busy handler."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Alembic's ini interpolation treats % specially; escape it in URLs with encoded characters.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_head(url: str) -> None:
    """Apply every migration: the only way fitserve's schema changes."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
