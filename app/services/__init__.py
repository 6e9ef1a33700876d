"""Use cases. Each takes the session first and keyword arguments after `*`; services flush, the
request's session dependency commits (or rolls back)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement


def owned_by(column: Any, owner: str | None) -> ColumnElement[bool]:
    """Rows of this caller: its key's rows, or in keyless mode the rows that have no owner."""
    return column.is_(None) if owner is None else column == owner


_ID = re.compile(r"[0-9a-f]{32}")


def is_id(value: str) -> bool:
    """Ids are uuid4 hex; anything else can't name a row (and never reaches the database)."""
    return _ID.fullmatch(value) is not None
