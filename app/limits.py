"""Request limits enforced before any parsing: body size, and finite numbers in JSON bodies.

`RequestLimitsMiddleware` is a pure ASGI middleware (no Starlette request objects, no buffering
beyond what it checks):

- a body whose Content-Length exceeds `max_body_bytes` is answered 413 before a byte is read;
  a chunked body (no Content-Length) is counted as it streams and answered 413 the moment it
  passes the limit;
- a JSON body is scanned for NaN, Infinity and numbers too large for a float64 (1e999). Python's
  json module accepts all three and pydantic would meet them as floats deep inside arrays, so they
  are refused here once, for every route, with the place where they occur.

Errors use the service's one shape: `{"detail": message, "code": ...}`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Cheap pre-filter over the raw bytes: only bodies that might hold a non-finite number get the
# slow, hook-laden parse. float64 overflows at ~1.8e308, so an exponent of 3+ digits or a run of
# 309+ digits is suspicious; the words may also sit harmlessly inside strings (a column "NaN").
_SUSPICIOUS = re.compile(rb"NaN|Infinity|[eE][+]?0*[1-9][0-9]{2,}|[0-9]{309,}")


class _BodyTooLarge(Exception):
    pass


class _NonFinite(float):
    """Marks where the parse met a number that is not a finite float64."""

    text: str

    def __new__(cls, text: str) -> _NonFinite:
        value = super().__new__(cls, "nan")
        value.text = text
        return value


def _parse_constant(text: str) -> float:
    return _NonFinite(text)


def _parse_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _parse_int(text: str) -> int | float:
    # Integers stay exact, but one beyond float64 cannot be a feature or a target either (and
    # int() refuses strings past 4300 digits, which would hide the place of the problem).
    if len(text.lstrip("-")) > 308:
        return _NonFinite(text)
    value = int(text)
    return value if abs(value) < 2**1023 else _NonFinite(text)


def _find_non_finite(value: Any, path: list[str | int]) -> tuple[list[str | int], str] | None:
    if isinstance(value, _NonFinite):
        return path, value.text
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _find_non_finite(item, [*path, key])
        if found is not None:
            return found
    return None


def _format_loc(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


def non_finite_error(body: bytes) -> tuple[str, list[str | int]] | None:
    """The message and location of the first NaN/Infinity/overflowing number in a JSON body."""
    if not _SUSPICIOUS.search(body):
        return None
    try:
        document = json.loads(
            body, parse_constant=_parse_constant, parse_float=_parse_float, parse_int=_parse_int
        )
    except (ValueError, RecursionError):
        return None  # not valid JSON: FastAPI answers that itself, with the position
    found = _find_non_finite(document, ["body"])
    if found is None:
        return None
    path, text = found
    shown = text if len(text) <= 20 else text[:17] + "..."
    return (
        f"{_format_loc(path[1:]) if len(path) > 1 else 'the body'} is {shown}: numbers must be "
        "finite (no NaN, Infinity or values beyond ±1.8e308); remove or impute that value",
        path,
    )


def _is_json(scope: Scope) -> bool:
    """As FastAPI decides: a JSON media type, or no Content-Type at all (parsed as JSON too)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return True


def _content_length(scope: Scope) -> int | None | str:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else text
    return None


async def _send_error(send: Send, status: int, detail: str, code: str, **extra: Any) -> None:
    body = json.dumps({"detail": detail, "code": code, **extra}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of an oversized body is never read; the connection can't be reused.
                *([(b"connection", b"close")] if status == 413 else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def too_large_message(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit:,} bytes (FITSERVE_MAX_BODY_BYTES); "
        "send a smaller dataset or split it, or raise the limit on the server"
    )


class RequestLimitsMiddleware:
    """413 for oversized bodies (declared or streamed), 422 for non-finite numbers in JSON.

    `max_body_bytes` defaults to `app.state.settings.max_body_bytes`, read per request so an app
    built per test with its own Settings is honoured.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _limit(self, scope: Scope) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return int(scope["app"].state.settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = _content_length(scope)
        if isinstance(declared, str):
            await _send_error(
                send, 400, f"Content-Length {declared!r} is not a number of bytes", "bad_request"
            )
            return
        if declared is not None and declared > limit:
            await _send_error(send, 413, too_large_message(limit), "too_large")
            return
        if _is_json(scope):
            await self._check_json(scope, receive, send, limit)
        else:
            await self._stream_counted(scope, receive, send, limit)

    async def _check_json(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        # JSON routes read the whole body anyway; read it here (bounded), check it, replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(send, 413, too_large_message(limit), "too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = non_finite_error(body)
        if problem is not None:
            detail, loc = problem
            # The shape of FastAPI's validation errors in app/errors.py: a client parses one thing.
            errors = [{"loc": loc, "msg": detail}]
            await _send_error(send, 422, detail, "validation_error", errors=errors)
            return
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        await self.app(scope, _replay(replay, receive), send)

    async def _stream_counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        size = 0
        rejected = False
        started = False

        async def counted_receive() -> Message:
            nonlocal size, rejected
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    rejected = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # whatever the app makes of the aborted read (a 400 or 500) is not sent
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not rejected:
                raise
        if rejected and not started:
            await _send_error(send, 413, too_large_message(limit), "too_large")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay_receive() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: wait for http.disconnect as the server sends it

    return replay_receive
