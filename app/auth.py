"""API keys: `Authorization: Bearer <key>`; keys are stored as sha256 hashes only.

Every dataset, job and model belongs to the key that created it (`owner_id`). In keyless loopback
mode (the embedded default) the owner is None and everything is shared by the one local user.

Keys are required whenever the server binds anything but loopback: `fitserve serve` calls
`ensure_keys_for_host` before it binds, and refuses to start when no key exists to send.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.api.deps import SettingsDep
from app.config import LOOPBACK_HOSTS, Settings
from app.errors import Unauthorized
from app.tables import ApiKey

KEY_PREFIX = "fs_"
MAX_KEY_NAME = 100  # api_keys.name is String(100)
# A secret is KEY_PREFIX + 43 url-safe characters; anything far longer is not one of ours, and
# hashing megabytes of header per request would be a free way to burn CPU.
MAX_SECRET_LENGTH = 256


class ApiKeysMissing(RuntimeError):
    """The server would be reachable by others (or keys are forced on) but no key exists."""


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_key_name(name: str) -> str:
    """Key names are labels shown by `keys list`: printable, 1..100 characters."""
    if not name or len(name) > MAX_KEY_NAME:
        raise ValueError(f"a key name needs 1 to {MAX_KEY_NAME} characters, got {len(name)}")
    if not name.isprintable():
        raise ValueError("a key name must be printable text (no control characters such as NUL)")
    return name


def create_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """Make a key; the secret is returned once and never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=check_key_name(name), key_hash=hash_key(secret))
    session.add(key)
    session.flush()
    return key, secret


def revoke_key(session: Session, *, name: str) -> ApiKey | None:
    """Revoke the key with this name (idempotent); None when there is no such key."""
    key = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is not None and key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        session.flush()
    return key


def active_key_count(session: Session) -> int:
    return session.scalar(select(func.count()).where(ApiKey.revoked_at.is_(None))) or 0


def ensure_keys_for_host(settings: Settings, engine: Engine) -> None:
    """Refuse to serve where keys are needed but none exists to send; call before binding.

    `settings.host` is the address the server is about to bind. A non-loopback host always needs
    keys, even with FITSERVE_REQUIRE_API_KEYS=false: an open training service on the network is
    how TorchServe and Ray clusters were taken over.
    """
    public = settings.host not in LOOPBACK_HOSTS
    if public and settings.require_api_keys is False:
        raise ApiKeysMissing(
            f"refusing to serve on {settings.host} with FITSERVE_REQUIRE_API_KEYS=false: keys are "
            "always required off loopback. Unset it, or bind --host 127.0.0.1"
        )
    if not settings.api_keys_required:
        return
    with Session(engine) as session:
        if active_key_count(session) > 0:
            return
    where = f"on {settings.host}" if public else "with FITSERVE_REQUIRE_API_KEYS=true"
    raise ApiKeysMissing(
        f"refusing to serve {where}: API keys are required and the database has none. "
        "Create one with `fitserve keys create NAME` (same --database-url), then send it as "
        "'Authorization: Bearer <key>'; or bind --host 127.0.0.1 for keyless local use"
    )


async def current_owner(request: Request, settings: SettingsDep) -> str | None:
    """The caller's key id; None in keyless loopback mode when no key is sent.

    A key that is sent is always checked, even where keys are optional, so a client never
    believes it is isolated while it is not. `async`, so a request without a key costs no
    thread-pool hop; only the database lookup runs in a thread.
    """
    header = request.headers.get("authorization")
    return await owner_for(header, settings, request.app.state.engine)


async def owner_for(header: str | None, settings: Settings, engine: Engine) -> str | None:
    """`current_owner` from the Authorization header's value; raises Unauthorized.

    The lookup runs in its own short transaction, not the request's: on SQLite every transaction
    takes the write lock (BEGIN IMMEDIATE), and a request session held open by authentication
    alone would block any other session the handler opens (/metrics, the event stream) until the
    busy timeout. It is one Core query on a pooled connection: an ORM session for it cost ~2.5x
    as much (215 vs 80 µs), on every request that sends a key.
    """
    if header is None:
        if settings.api_keys_required:
            raise Unauthorized(
                "this server requires an API key: send 'Authorization: Bearer <key>' "
                "(create one with `fitserve keys create NAME`)"
            )
        return None
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("the Authorization header must be 'Bearer <key>'")
    if len(secret) > MAX_SECRET_LENGTH:
        raise Unauthorized("that API key is not known or was revoked")
    key_id = await run_in_threadpool(_active_key_id, engine, secret)
    if key_id is None:
        raise Unauthorized(
            "that API key is not known or was revoked; create one with `fitserve keys create NAME`"
        )
    return key_id


def _active_key_id(engine: Engine, secret: str) -> str | None:
    query = select(ApiKey.id).where(
        ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)
    )
    with engine.connect() as connection:
        return connection.execute(query).scalar()  # type: ignore[no-any-return]


OwnerDep = Annotated[str | None, Depends(current_owner)]
