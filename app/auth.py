"""API keys: `Authorization: Bearer <key>`; keys are stored as sha256 hashes only.

Every dataset, job and model belongs to the key that created it (`owner_id`). In keyless loopback
mode (the embedded default) the owner is None and everything is shared by the one local user.

Keys are required whenever the server binds anything but loopback: `fitserve serve` calls
`ensure_keys_for_host` before it binds, and refuses to start when no key exists to send.

A key the database confirmed is trusted for `VERIFIED_KEY_SECONDS` without asking again
(`VerifiedKeys`, one per app), so a keyed request costs no query and no thread hop most of the
time, and a revoked key — revoked by `fitserve keys revoke` in another process, or by another
API process — is refused by every process within that time.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import UTC, datetime

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.config import LOOPBACK_HOSTS, Settings
from app.errors import Unauthorized
from app.queue import store
from app.studies import conduct
from app.tables import ApiKey

KEY_PREFIX = "fs_"
MAX_KEY_NAME = 100  # api_keys.name is String(100)
# A secret is KEY_PREFIX + 43 url-safe characters; anything far longer is not one of ours, and
# hashing megabytes of header per request would be a free way to burn CPU.
MAX_SECRET_LENGTH = 256
# The request-state key under which app.access leaves the owner it checked before the body.
OWNER_STATE = "fitserve.owner"


# How long a verified key is trusted without asking the database: the longest a revoked key can
# still be accepted. Short enough to be "at once" for a person revoking a key; long enough that
# a busy key is looked up a few times a second rather than on every request.
VERIFIED_KEY_SECONDS = 0.5


class VerifiedKeys:
    """Key hashes the database confirmed as active in the last `seconds`, with their key ids.

    Only confirmations are kept: an unknown key is looked up every time, so a new key works at
    once and guessing fills nothing. Bounded: when full, the oldest half is dropped.
    """

    def __init__(self, seconds: float = VERIFIED_KEY_SECONDS, capacity: int = 10_000) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self._items: dict[str, tuple[str, float]] = {}  # hash -> (key id, verified at)
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> str | None:
        found = self._items.get(key_hash)
        if found is None or time.monotonic() - found[1] >= self.seconds:
            return None
        return found[0]

    def add(self, key_hash: str, key_id: str) -> None:
        with self._lock:
            if len(self._items) >= self.capacity:
                for stale in list(self._items)[: self.capacity // 2]:  # oldest first
                    del self._items[stale]
            self._items.pop(key_hash, None)  # re-inserted last: the dict stays oldest first
            self._items[key_hash] = (key_id, time.monotonic())


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


def revoke_key(session: Session, *, name: str, stop_jobs: bool = True) -> ApiKey | None:
    """Revoke the key with this name (idempotent); None when there is no such key.

    Revocation reaches what is already under way: with `stop_jobs` (the default) the key's queued
    jobs are cancelled and its running ones stopped at their next batch, each recording why (no
    one could cancel them otherwise: the key that owns them no longer authenticates), and its
    running studies are cancelled, so no more trials are sampled for it. Its open event
    streams, of jobs and of studies, end at their next poll (app/services/events.py)."""
    key = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        session.flush()
    if stop_jobs:
        store.stop_owner_jobs(
            session,
            owner_id=key.id,
            error=f"stopped because the API key {key.name!r} that submitted it was revoked",
            error_code="key_revoked",
        )
        conduct.cancel_owner_studies(session, owner_id=key.id)
    return key


def is_revoked(session: Session, owner: str | None) -> bool:
    """Whether the key `owner` has been revoked (or deleted) since a request authenticated."""
    if owner is None:
        return False
    revoked = session.execute(select(ApiKey.revoked_at).where(ApiKey.id == owner)).one_or_none()
    return revoked is None or revoked[0] is not None


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


async def owner_for(
    header: str | None, settings: Settings, engine: Engine, verified: VerifiedKeys
) -> str | None:
    """The caller's key id from the Authorization header's value (None: keyless loopback mode,
    no key sent); raises Unauthorized. `app.api.deps.OwnerDep` is this, as a dependency.

    The lookup runs in its own short transaction, not the request's: on SQLite every transaction
    takes the write lock (BEGIN IMMEDIATE), and a request session held open by authentication
    alone would block any other session the handler opens (/metrics, the event stream) until the
    busy timeout. It is one Core query on a pooled connection (an ORM session for it cost ~2.5x
    as much, 215 vs 80 µs), made only when `verified` has no fresh confirmation of the key.
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
    key_hash = hash_key(secret)
    key_id = verified.get(key_hash)
    if key_id is not None:
        return key_id
    key_id = await run_in_threadpool(_active_key_id, engine, key_hash)
    if key_id is None:
        raise Unauthorized(
            "that API key is not known or was revoked; create one with `fitserve keys create NAME`"
        )
    verified.add(key_hash, key_id)
    return key_id


def _active_key_id(engine: Engine, key_hash: str) -> str | None:
    query = select(ApiKey.id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    with engine.connect() as connection:
        return connection.execute(query).scalar()  # type: ignore[no-any-return]
