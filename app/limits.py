"""Request limits enforced before any parsing: body size, and what JSON bodies may hold.

`RequestLimitsMiddleware` is a pure ASGI middleware (no Starlette request objects, no buffering
beyond what it checks):

- a body whose Content-Length exceeds `max_body_bytes` (for a multipart file upload, which is
  spooled to disk and parsed block by block, `Settings.upload_bytes_limit`) is answered 413
  before any of it is parsed or kept; a chunked body (no Content-Length) is counted as it
  streams and refused the moment it passes the limit (a declared length is the server's to
  hold the body to). The rest of a refused body is read and
  dropped (up to a bound) so a client still sending reads the 413 rather than a connection
  reset; a client that asked for "Expect: 100-continue" is answered before it sends anything;
- the JSON body of a route that takes a spec, a config or names rather than data (anything but
  the `DATA_ROUTES`) is held to `max_json_body_bytes` (1 MiB): FastAPI parses such bodies on the
  event loop, where a 63 MB one stalled every request for 1-2.5 s;
- a JSON body is scanned for NaN, Infinity and numbers too large for a float64 (1e999). Python's
  json module accepts all three and pydantic would meet them as floats deep inside arrays, so they
  are refused here once, for every route, with the place where they occur. So is text holding
  a lone surrogate ("\\ud800"): valid JSON, but not Unicode any database can store. The one
  exception is a route that parses its body with orjson (`OWN_CHECK_ROUTES`), which refuses all
  of these itself: its body is only counted here, and the route calls `check_body` when orjson
  refuses it, for the same 422 (the scan cost ~7 ms of the event loop's time per MB).

Errors use the service's one shape: `{"detail": message, "code": ...}`.
"""

from __future__ import annotations

import codecs
import collections
import email.message
import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

import anyio.to_thread

from app.config import Settings
from app.errors import Unprocessable, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Cheap pre-filter, run on each chunk of a JSON body (as UTF-8) as it arrives: only bodies that
# might hold a problem get the slow, hook-laden parse. float64 overflows at ~1.8e308, so an
# exponent of 3+ digits or a run of 309+ digits is suspicious; \uD800-\uDFFF escapes (or their
# raw UTF-8 bytes, which Python's json lets through) may be lone surrogates. All of these may
# also sit harmlessly inside strings (a column "NaN", a valid surrogate pair); the parse tells.
# Each test is a C-speed pass (bytes.translate and substring search, ~15 ms per MB together): a
# regex with repeats costs several times that, and `[0-9]{309,}` retried each 308-digit run at
# every position of it (~0.64 s per MB).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789E", b"000000000e")
_LONG_RUN = b"0" * 309
_WORDS = (b"NaN", b"Infinity", b"e000", b"e+000", _LONG_RUN)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
# Bytes kept from the previous chunk so that a word split across two chunks is still found.
_OVERLAP = len(_LONG_RUN)


def _may_hold_problem(data: bytes) -> bool:
    folded = data.translate(_DIGITS_TO_ZERO)
    if any(word in folded for word in _WORDS):
        return True
    # The regex costs ~8 ms per MB; numeric bodies hold neither of its prefixes, found at C speed.
    return (b"\\u" in data or b"\xed" in data) and _SURROGATE.search(data) is not None


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


# Integers from here on (and any of 309 digits or more) are beyond float64 to this check.
INT_LIMIT = 2**1023


def _parse_int(text: str) -> int | float:
    # Integers stay exact, but one beyond float64 cannot be a feature or a target either (and
    # int() refuses strings past 4300 digits, which would hide the place of the problem).
    if len(text.lstrip("-")) > 308:
        return _NonFinite(text)
    value = int(text)
    return value if abs(value) < INT_LIMIT else _NonFinite(text)


def _is_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find_problem(value: Any, path: list[str | int]) -> tuple[list[str | int], str] | None:
    """The first non-finite number or text with a lone surrogate, depth first, and its place."""
    if isinstance(value, _NonFinite):
        shown = value.text if len(value.text) <= 20 else value.text[:17] + "..."
        return path, (
            f"is {shown}: numbers must be finite (no NaN, Infinity or values beyond ±1.8e308); "
            "remove or impute that value"
        )
    if isinstance(value, str):
        if _is_lone_surrogate(value):
            return path, (
                "holds a lone surrogate (an unpaired \\uD800-\\uDFFF escape), which is not valid "
                "Unicode text and can't be stored; remove it or send the whole character"
            )
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_lone_surrogate(key):
                return [*path, key.encode("utf-8", "backslashreplace").decode()], (
                    "is a field name with a lone surrogate, which is not valid Unicode text"
                )
            found = _find_problem(item, [*path, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_problem(item, [*path, i])
            if found is not None:
                return found
    return None


def _format_loc(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


class BodyScanner:
    """Decodes a JSON body as its chunks arrive and notes whether it may hold a problem.

    Each chunk costs time linear in its size, on whatever thread feeds it; only a body that
    `suspicious` flags needs `parse_problem`, the full hook-laden parse (run that in a thread).
    """

    def __init__(self) -> None:
        self.encoding = "utf-8"
        self.decode_error: str | None = None
        self.suspicious = False
        self._head = b""
        self._decoder: codecs.IncrementalDecoder | None = None
        self._consumed = 0
        self._tail = b""

    def feed(self, chunk: bytes, *, final: bool) -> None:
        if self.decode_error is not None:
            return
        if self._decoder is None:
            # json.detect_encoding looks at the first 4 bytes (a BOM, or the NUL pattern of
            # UTF-16/32), as json.loads decodes bytes.
            self._head += chunk
            if len(self._head) < 4 and not final:
                return
            self.encoding = json.detect_encoding(self._head)
            self._decoder = codecs.getincrementaldecoder(self.encoding)("surrogatepass")
            chunk, self._head = self._head, b""
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            # FastAPI would answer a bare 400 "There was an error parsing the body".
            self.decode_error = (
                f"the body is not {self.encoding.upper()} text: byte {self._consumed + exc.start} "
                "can't be decoded; send JSON encoded as UTF-8"
            )
            return
        self._consumed += len(chunk)
        if not self.suspicious:
            utf8 = chunk if self.encoding == "utf-8" else text.encode("utf-8", "surrogatepass")
            window = self._tail + utf8
            self.suspicious = _may_hold_problem(window)
            self._tail = window[-_OVERLAP:]

    def feed_whole(self, body: bytes) -> None:
        """`feed` a whole body at once, to a new scanner. An ASCII body in UTF-8 (what nearly
        every client sends: json.dumps escapes the rest) has nothing to decode: only the
        pre-filter runs."""
        # ASCII without a NUL in its first 4 bytes is UTF-8 by json.detect_encoding's rule
        if body.isascii() and b"\x00" not in body[:4]:
            self.suspicious = _may_hold_problem(body)
        else:
            self.feed(body, final=True)


def parse_problem(body: bytes) -> tuple[str, list[str | int]] | None:
    """The message and location of the first NaN/Infinity/overflowing number, or string with a
    lone surrogate, found by parsing the whole body; None when there is none (or the body is not
    JSON at all). Costs a full parse with Python hooks: call it only for a suspicious body, and
    off the event loop."""
    try:
        document = json.loads(
            body, parse_constant=_parse_constant, parse_float=_parse_float, parse_int=_parse_int
        )
    except (ValueError, RecursionError):
        return None  # not valid JSON: FastAPI answers that itself, with the position
    found = _find_problem(document, ["body"])
    if found is None:
        return None
    path, problem = found
    return f"{_format_loc(path[1:]) if len(path) > 1 else 'the body'} {problem}", path


def body_problem(body: bytes) -> tuple[str, list[str | int]] | None:
    """`BodyScanner` and `parse_problem` over a body held whole: the first undecodable byte,
    non-finite number or lone surrogate, with its location; None when there is none."""
    scanner = BodyScanner()
    scanner.feed_whole(body)
    if scanner.decode_error is not None:
        return scanner.decode_error, ["body"]
    return parse_problem(body) if scanner.suspicious else None


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name, the first of each: read once, in one pass,
    by a layer that looks at several."""
    return dict(reversed(list(scope.get("headers", ()))))  # reversed: the first of a name wins


def check_body(body: bytes, content_type: str | None) -> None:
    """For an `OWN_CHECK_ROUTES` route, whose body this middleware only counts: raises the 422
    the middleware sends for a JSON body (or one without a Content-Type) with an undecodable
    byte, a non-finite number or a lone surrogate. Costs a scan and maybe a parse: call it off
    the event loop, where orjson has refused the body or its shape is not the usual one."""
    if content_type is not None and not declares_json(content_type):
        return
    problem = body_problem(body)
    if problem is not None:
        detail, loc = problem
        raise Unprocessable(detail, loc=tuple(loc), code="validation_error")


def is_json(headers: dict[bytes, bytes]) -> bool:
    """A JSON media type, or no Content-Type at all. FastAPI parses only the first as JSON (its
    strict_content_type); the second is checked here too because some frameworks would."""
    value = headers.get(b"content-type")
    return value is None or declares_json(value.decode("latin-1"))


def is_multipart(headers: dict[bytes, bytes]) -> bool:
    value = headers.get(b"content-type")
    return value is not None and value.split(b";")[0].strip().lower() == b"multipart/form-data"


def declares_json(content_type: str | None) -> bool:
    """Whether a Content-Type says JSON — application/json or application/*+json — by FastAPI's
    own rule for parsing a body (the one decision every route and layer here shares)."""
    if not content_type:
        return False
    if content_type == "application/json":  # what nearly every client sends: no parse
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _json_part(length: bytes, body: bytes) -> bytes:
    """The JSON of an OIP request with binary tensors: the header before them, as long as
    Inference-Header-Content-Length says (a malformed length is /v2's to refuse)."""
    text = length.decode("latin-1").strip()
    valid = text.isascii() and text.isdigit()
    return body[: int(text)] if valid and int(text) <= len(body) else b""


def _content_length(headers: dict[bytes, bytes]) -> int | None | str:
    value = headers.get(b"content-length")
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    return int(text) if text.isascii() and text.isdigit() else text


async def send_error(
    send: Send,
    status: int,
    detail: str,
    code: str,
    *,
    headers: dict[str, str] | None = None,
    close: bool = False,
    **extra: Any,
) -> None:
    """Answer with the service's error shape from a middleware, byte for byte what the app's
    own handlers send (Starlette's JSONResponse rendering and header order). `close` for a
    413, whose body is left unread: the connection can't be reused."""
    body = json.dumps(
        error_body(detail, code, **extra), ensure_ascii=False, separators=(",", ":")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *(
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in (headers or {}).items()
                ),
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
                *([(b"connection", b"close")] if close or status == 413 else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def too_large_message(limit: int, setting: str = "FITSERVE_MAX_BODY_BYTES") -> str:
    return (
        f"the request body is larger than the limit of {limit:,} bytes ({setting}); "
        "send a smaller dataset or split it, or raise the limit on the server"
    )


def too_large_spec_message(limit: int) -> str:
    return (
        f"the JSON body is larger than the limit of {limit:,} bytes for this route "
        "(FITSERVE_MAX_JSON_BODY_BYTES: specs, configs and names are small; data goes to "
        "POST /v1/datasets and the predict routes, up to FITSERVE_MAX_BODY_BYTES); send a "
        "smaller body, or raise the limit on the server"
    )


# The routes whose JSON bodies carry data (a dataset, rows to predict, OIP tensors) and may be as
# large as FITSERVE_MAX_BODY_BYTES: each reads and parses its body itself, off the event loop.
# Every other route's JSON body is parsed by FastAPI on the event loop (json.loads and pydantic
# hold it ~25-50 ms per MB), so it is held to FITSERVE_MAX_JSON_BODY_BYTES.
DATA_ROUTES = re.compile(
    r"/v1/datasets|/v1/models/[^/]+/predict(?:\.csv)?|/v2/models/[^/]+(?:/versions/[^/]+)?/infer"
)


def is_data_route(scope: Scope) -> bool:
    return (
        scope.get("method") == "POST" and DATA_ROUTES.fullmatch(scope.get("path", "")) is not None
    )


# The routes that check their own JSON body: they parse it with orjson, which refuses NaN,
# Infinity, numbers beyond float64 and lone surrogates, and call `check_body` when it does.
OWN_CHECK_ROUTES = re.compile(r"/v1/models/[^/]+/predict")


def checks_own_json(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """An `OWN_CHECK_ROUTES` request whose body is JSON alone (OIP's binary tensors after a JSON
    header are checked here, whatever the route)."""
    return (
        scope.get("method") == "POST"
        and OWN_CHECK_ROUTES.fullmatch(scope.get("path", "")) is not None
        and b"inference-header-content-length" not in headers
    )


_JSON_SETTING = "FITSERVE_MAX_JSON_BODY_BYTES"


class _Limit(NamedTuple):
    """A request's body limit; its 413 message is written only for a body past it."""

    size: int
    setting: str  # the setting that sets it, named in the 413
    drain_budget: int  # how much of a refused body is read and dropped: by the largest of its kind

    @classmethod
    def of(cls, size: int, setting: str) -> _Limit:
        return cls(size, setting, _drain_budget(size))

    def message(self) -> str:
        if self.setting == _JSON_SETTING:
            return too_large_spec_message(self.size)
        return too_large_message(self.size, self.setting)


class RequestLimitsMiddleware:
    """413 for oversized bodies (declared or streamed); 422 for non-finite numbers or lone
    surrogates in JSON.

    `max_body_bytes` and `max_json_body_bytes` (the JSON bodies of routes other than the
    `DATA_ROUTES`) default to the settings of `app.state.settings`, read per request so an app
    built per test with its own Settings is honoured.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int | None = None,
        max_json_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_body_bytes = max_json_body_bytes
        self._limits: tuple[_Limit, _Limit, _Limit] | None = None
        self._limits_settings: Settings | None = None

    def _limit(self, scope: Scope, headers: dict[bytes, bytes], *, json_body: bool) -> _Limit:
        """The body's limit. `json_body`: `is_json` (never a file upload)."""
        settings = None if self.max_body_bytes is not None else scope["app"].state.settings
        if self._limits is None or settings is not self._limits_settings:
            self._limits, self._limits_settings = self._limits_of(settings), settings
        body, upload, spec = self._limits
        if not json_body:
            return upload if is_multipart(headers) else body
        return body if is_data_route(scope) else spec

    def _limits_of(self, settings: Settings | None) -> tuple[_Limit, _Limit, _Limit]:
        """The limits of (any body, a file upload, a JSON body of a route other than the
        `DATA_ROUTES`) under `settings` (frozen: worked out once for each)."""
        if settings is None:
            assert self.max_body_bytes is not None
            body = upload = _Limit.of(self.max_body_bytes, "FITSERVE_MAX_BODY_BYTES")
        else:
            body = _Limit.of(int(settings.max_body_bytes), "FITSERVE_MAX_BODY_BYTES")
            # a file upload is spooled to disk and parsed block by block
            upload = _Limit.of(int(settings.upload_bytes_limit), "FITSERVE_MAX_UPLOAD_BYTES")
        json_limit = self.max_json_body_bytes
        if json_limit is None:
            json_limit = settings.max_json_body_bytes if settings is not None else body.size
        if json_limit >= body.size:
            return body, upload, body
        return body, upload, _Limit(int(json_limit), _JSON_SETTING, body.drain_budget)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = request_headers(scope)
        json_body = is_json(headers)
        limit = self._limit(scope, headers, json_body=json_body)
        declared = _content_length(headers)
        if isinstance(declared, str):
            await send_error(
                send, 400, f"Content-Length {declared!r} is not a number of bytes", "bad_request"
            )
            return
        if declared is not None and declared > limit.size:
            # A client waiting for "100 Continue" has sent nothing: answer at once. Others are
            # already sending; read and drop what they send, or they may see a reset, not a 413.
            if not expects_continue(scope):
                await drain(receive, limit.drain_budget)
            await send_error(send, 413, limit.message(), "too_large")
            return
        if json_body and not checks_own_json(scope, headers):
            await self._check_json(scope, receive, send, limit, headers)
        elif declared is None:
            await self._stream_counted(scope, receive, send, limit)
        else:
            # Within the limit, as declared: HTTP/1.1's framing has the server hand on that many
            # bytes and no more (uvicorn's parser reads the rest as the next request), so there
            # is nothing to count; a chunked body declares no length.
            await self.app(scope, receive, send)

    async def _check_json(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: _Limit,
        headers: dict[bytes, bytes],
    ) -> None:
        # JSON routes read the whole body anyway; read it here (bounded), check it, replay it.
        # Each chunk is decoded and scanned as it arrives, so no step costs more than a chunk's
        # worth of time on the event loop; only a suspicious body is parsed whole, in a thread.
        chunks, size = [], 0
        scanner = BodyScanner()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > limit.size:
                if more:
                    await drain(receive, limit.drain_budget)
                await send_error(send, 413, limit.message(), "too_large")
                return
            chunks.append(chunk)
            if not more and len(chunks) == 1:  # the whole body in one message, as small ones come
                scanner.feed_whole(chunk)
                break
            scanner.feed(chunk, final=not more)
            if not more:
                break
        # Joined only where the whole body is checked, in a thread: a 60 MB copy on the event
        # loop took ~0.1 s there on a busy machine.
        problem: tuple[str, list[str | int]] | None = None
        binary_part = headers.get(b"inference-header-content-length")
        if binary_part is not None:  # OIP binary tensors follow the JSON: check only the JSON
            problem = await anyio.to_thread.run_sync(
                lambda: body_problem(_json_part(binary_part, b"".join(chunks)))
            )
        elif scanner.decode_error is not None:
            problem = scanner.decode_error, ["body"]
        elif scanner.suspicious:
            problem = await anyio.to_thread.run_sync(lambda: parse_problem(b"".join(chunks)))
        if problem is not None:
            detail, loc = problem
            # The shape of FastAPI's validation errors in app/errors.py: a client parses one thing.
            errors = [{"loc": loc, "msg": detail}]
            await send_error(send, 422, detail, "validation_error", errors=errors)
            return
        await self.app(scope, replay_chunks(chunks, receive), send)

    async def _stream_counted(
        self, scope: Scope, receive: Receive, send: Send, limit: _Limit
    ) -> None:
        size = 0
        rejected = False
        started = False
        more_body = True

        async def counted_receive() -> Message:
            nonlocal size, rejected, more_body
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                more_body = bool(message.get("more_body", False))
                if size > limit.size:
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
            if more_body:
                await drain(receive, limit.drain_budget)
            await send_error(send, 413, limit.message(), "too_large")


def expects_continue(scope: Scope) -> bool:
    return any(
        name == b"expect" and value.strip().lower() == b"100-continue"
        for name, value in scope.get("headers", ())
    )


def _drain_budget(limit: int) -> int:
    # Past this, a client is sending far more than any request may hold: stop reading and let
    # the connection close (it may then see a reset instead of the 413).
    return max(4 * limit, 1 << 20)


async def drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a refused body, up to `budget` bytes; nothing is kept."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        budget -= len(message.get("body", b""))


def replay_chunks(chunks: list[bytes], receive: Receive) -> Receive:
    """A receive that hands over a body already read, chunk by chunk as it came, then the real
    one's: a route that streams the body (a dataset upload) never needs it in one piece."""
    last = len(chunks) - 1
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < last}
        for i, chunk in enumerate(chunks)
    ]
    return replay(messages or [{"type": "http.request", "body": b"", "more_body": False}], receive)


def replay(messages: list[Message], receive: Receive) -> Receive:
    pending = collections.deque(messages)

    async def replay_receive() -> Message:
        if pending:
            return pending.popleft()
        return await receive()  # after the body: wait for http.disconnect as the server sends it

    return replay_receive
