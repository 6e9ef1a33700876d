"""Annotated dependency aliases that keep route signatures readable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings


async def get_settings_dep(request: Request) -> Settings:
    # async: a plain attribute read must not cost a thread-pool hop on every request
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """The request's session owns the transaction: commit when the handler returns, roll back when
    it raises. Services only flush."""
    with request.app.state.sessionmaker() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": commit as the handler returns, before the response is sent, so a client never
# sees a 201/202 for a row that isn't committed yet (or whose commit then fails).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
