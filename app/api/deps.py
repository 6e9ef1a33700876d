"""Annotated dependency aliases that keep route signatures readable: the session, the settings,
the caller (OwnerDep) and the model cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.auth import OWNER_STATE, owner_for
from app.config import Settings
from app.inference import ModelCacheT


async def get_settings_dep(request: Request) -> Settings:
    # async: a plain attribute read must not cost a thread-pool hop on every request
    return request.app.state.settings  # type: ignore[no-any-return]


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


async def current_owner(request: Request) -> str | None:
    """The caller's key id; None in keyless loopback mode when no key is sent.

    A key that is sent is always checked, even where keys are optional, so a client never
    believes it is isolated while it is not. `async`, so a request costs no thread-pool hop
    unless the key must be looked up in the database (`app.auth.owner_for`).
    """
    checked = request.scope.get("state", {})
    if OWNER_STATE in checked:  # checked before the body was read (app/access.py)
        return checked[OWNER_STATE]  # type: ignore[no-any-return]
    state = request.app.state
    header = request.headers.get("authorization")
    return await owner_for(header, state.settings, state.engine, state.verified_keys)


async def get_model_cache(request: Request) -> ModelCacheT:
    return request.app.state.model_cache  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": commit as the handler returns, before the response is sent, so a client never
# sees a 201/202 for a row that isn't committed yet (or whose commit then fails).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
OwnerDep = Annotated[str | None, Depends(current_owner)]
ModelCacheDep = Annotated[ModelCacheT, Depends(get_model_cache)]
