"""API keys: `Authorization: Bearer <key>`; keys are stored as sha256 hashes only.

Every dataset, job and model belongs to the key that created it (`owner_id`). In keyless loopback
mode (the embedded default) the owner is None and everything is shared by the one local user.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep
from app.tables import ApiKey

KEY_PREFIX = "fs_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """Make a key; the secret is returned once and never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, key_hash=hash_key(secret))
    session.add(key)
    session.flush()
    return key, secret


def current_owner(request: Request, session: SessionDep, settings: SettingsDep) -> str | None:
    from app.errors import Unauthorized

    header = request.headers.get("authorization")
    if header is None:
        if settings.api_keys_required:
            raise Unauthorized(
                "this server requires an API key: send 'Authorization: Bearer <key>' "
                "(create one with `fitserve keys create NAME`)"
            )
        return None
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    key = session.scalar(
        select(ApiKey).where(
            ApiKey.key_hash == hash_key(secret.strip()), ApiKey.revoked_at.is_(None)
        )
    )
    if key is None:
        raise Unauthorized(
            "that API key is not known or was revoked; create one with `fitserve keys create NAME`"
        )
    return key.id


OwnerDep = Annotated[str | None, Depends(current_owner)]
