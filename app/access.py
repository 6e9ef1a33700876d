"""Who may send a request, decided from its headers before any of its body is read.

`AccessMiddleware` is the outermost layer of the app:

- **The key first.** A /v1 or /v2 request that carries a body has its API key checked before one
  byte of the body is read: an unknown, revoked or missing (where required) key is a 401, so
  an anonymous client can't make the server receive, scan or parse megabytes. The owner found is
  left in the request's state, and `app.api.deps.current_owner` uses it instead of looking again.
- **Keyless loopback mode is for this machine only.** Without keys, anything that can reach the
  port can read and write everything, and a web page is such a thing: through DNS rebinding
  (its own name re-pointed at 127.0.0.1, so `Host` names the attacker's site) or a cross-site
  form POST (no preflight for multipart). So in keyless mode a `Host` that isn't a loopback name
  is refused (421), and so is a browser request from another site (`Sec-Fetch-Site: cross-site`
  or `same-site`, or an `Origin` that isn't a loopback origin) with 403. Requests that send
  neither header (curl, the Python client, tests) are what keyless mode is for. With keys
  required nothing changes: a key is what a web page can't send on the user's behalf.
"""

from __future__ import annotations

import functools
import logging
from urllib.parse import urlsplit

import anyio

from app.auth import OWNER_STATE, owner_for
from app.config import LOOPBACK_HOSTS, Settings
from app.errors import DATABASE_DOWN, DATABASE_DOWN_ERRORS, Unauthorized
from app.limits import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    drain,
    expects_continue,
    request_headers,
    send_error,
)

log = logging.getLogger("fitserve.access")

# Routes whose bodies are checked against a key first; the others either take no body or are
# open (health, docs).
_KEYED_PREFIXES = ("/v1/", "/v2/")
# What is read (and dropped) of a refused request's body before the connection is closed.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 2.0


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


@functools.lru_cache(maxsize=64)  # a client sends the same Host on every request
def is_loopback_host(host: str) -> bool:
    """A Host header value (name[:port], [v6]:port) that names this machine."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
            return False
    else:
        name, _, port = host.partition(":")
        if port and not (port.isascii() and port.isdigit()):
            return False
    # "*.localhost" resolves to loopback by RFC 6761, and browsers never send it to DNS
    return name in LOOPBACK_HOSTS or name.endswith(".localhost")


def _is_loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
        netloc = parts.netloc
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and is_loopback_host(netloc)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in {b"", b"0"}
    return b"transfer-encoding" in headers


def cross_site_problem(headers: dict[bytes, bytes]) -> str | None:
    """Why a keyless request looks like it came from a browser page on another site, or None."""
    fetch_site = _header(headers, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() in {"cross-site", "same-site"}:
        return (
            f"Sec-Fetch-Site is {fetch_site.strip()!r}: this server runs without API keys, so it "
            "answers only pages it serves itself and clients on this machine"
        )
    origin = _header(headers, b"origin")
    if origin is not None and not _is_loopback_origin(origin.strip()):
        return (
            f"Origin {origin.strip()[:100]!r} is another site: this server runs without API "
            "keys, so it answers only pages it serves itself and clients on this machine"
        )
    return None


class AccessMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["app"].state.settings
        headers = request_headers(scope)
        if not settings.api_keys_required:
            host = _header(headers, b"host")
            if host is None or not is_loopback_host(host):
                shown = "none" if host is None else repr(host[:100])
                await send_error(
                    send,
                    421,
                    f"Host {shown} is not this machine: this server runs without API keys and "
                    "answers only requests addressed to localhost or 127.0.0.1 (a web page "
                    "re-pointing its own name at this port is refused); use "
                    "http://127.0.0.1:PORT, or create keys to serve other names",
                    "misdirected_request",
                )
                return
            problem = cross_site_problem(headers)
            if problem is not None:
                await send_error(send, 403, problem, "cross_site")
                return
        if scope["path"].startswith(_KEYED_PREFIXES) and _has_body(headers):
            try:
                state = scope["app"].state
                owner = await owner_for(
                    _header(headers, b"authorization"), settings, state.engine, state.verified_keys
                )
            except DATABASE_DOWN_ERRORS as exc:
                log.warning("database error while checking a key: %s", exc)
                await send_error(
                    send,
                    503,
                    DATABASE_DOWN,
                    "unavailable",
                    headers={"Retry-After": "2"},
                    close=True,
                )
                return
            except Unauthorized as exc:
                await send_error(send, 401, exc.message, exc.code, headers=exc.headers)
                # Then read and drop a little of the body, briefly, so a client still sending
                # sees the 401 rather than a reset; one waiting for 100 Continue sends nothing.
                if not expects_continue(scope):
                    with anyio.move_on_after(_DRAIN_SECONDS):
                        await drain(receive, _DRAIN_BYTES)
                return
            scope.setdefault("state", {})[OWNER_STATE] = owner
        await self.app(scope, receive, send)
