"""The database's clock, for leases, backoff and the time a job has run.

Leases are compared across machines, so they are set and checked on one clock: the database's.
A worker whose own clock drifts can't make a live lease look expired, or an expired one live.

SQLite: `strftime(... 'now')` is UTC with millisecond resolution (CURRENT_TIMESTAMP has only
seconds, too coarse for a 2-second test lease); the trailing '000' makes the text match the
six-digit fraction SQLAlchemy writes and parses, so stored values compare correctly as text.
Postgres: `now()` is the transaction's start, which is what a short queue transaction wants.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, DateTime, Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement[Any]):  # noqa: N801 - reads as a SQL function
    """`db_now(seconds)`: the database's current UTC time plus `seconds` (may be negative)."""

    type = DateTime(timezone=True)
    inherit_cache = True
    name = "db_now"

    def __init__(self, seconds: float | ColumnElement[Any] = 0.0) -> None:
        if not isinstance(seconds, ColumnElement):
            seconds = literal(float(seconds), Float())
        super().__init__(seconds)


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    return f"(now() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {offset})) || '000')"


class seconds_since(FunctionElement[Any]):  # noqa: N801 - reads as a SQL function
    """`seconds_since(column)`: seconds from a timestamp the database wrote with `db_now` to the
    database's current time, as a float (0 for NULL)."""

    type = Float()
    inherit_cache = True
    name = "seconds_since"

    def __init__(self, timestamp: ColumnElement[Any]) -> None:
        super().__init__(timestamp)


@compiles(seconds_since, "postgresql")
def _seconds_since_postgresql(element: seconds_since, compiler: Any, **kw: Any) -> str:
    timestamp = compiler.process(element.clauses, **kw)
    return f"COALESCE(EXTRACT(EPOCH FROM (now() - {timestamp}))::float8, 0.0)"


@compiles(seconds_since, "sqlite")
def _seconds_since_sqlite(element: seconds_since, compiler: Any, **kw: Any) -> str:
    # julianday() reads the six-digit fraction db_now stores; a day is 86,400 s
    timestamp = compiler.process(element.clauses, **kw)
    return f"COALESCE((julianday('now') - julianday({timestamp})) * 86400.0, 0.0)"
