"""fitserve's errors, drawn once, and the one handler that turns them into responses.

    Exception
    └── FitserveError               status 400, code "bad_request"; base of everything a user sees
        ├── BadRequest              400 "bad_request"       malformed (an OIP inference request)
        ├── Unauthorized            401 "unauthorized"      no key, a malformed or unknown key
        ├── NotFound                404 "not_found"         doesn't exist, or belongs to another key
        ├── Conflict                409 "conflict"          the row's state forbids it (cancel a
        │                                                    finished job, delete a dataset in use)
        ├── PayloadTooLarge         413 "too_large"         over a configured limit
        ├── Unsupported             415 "unsupported_media_type"
        ├── Unprocessable           422 "unprocessable"     parses, but can't work (spec vs data)
        └── ServiceUnavailable      503 "unavailable"       the database is not answering

Every response body is `{"detail": message, "code": ...}`; FastAPI's validation errors add
`"errors": [{"loc": [...], "msg": ...}]` and their message names the field path. Starlette's own
404/405 and database failures go through the same shape, so a client parses one thing. Messages
say what is wrong and how to fix it: the service shows them to the user as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from models.errors import SpecError

log = logging.getLogger("fitserve.errors")


class FitserveError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers


class BadRequest(FitserveError):
    """The request can't be read as what the route takes (OIP's status for a bad request)."""


class Unauthorized(FitserveError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class NotFound(FitserveError):
    status_code = 404
    code = "not_found"


class Conflict(FitserveError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(FitserveError):
    status_code = 413
    code = "too_large"


class Unsupported(FitserveError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(FitserveError):
    """A request that parsed but can't work; `loc` points at the field, as pydantic's do."""

    status_code = 422
    code = "unprocessable"

    def __init__(self, message: str, *, loc: tuple[str | int, ...] = (), code: str | None = None):
        super().__init__(message, code=code)
        self.loc = tuple(loc)

    @classmethod
    def from_spec_error(
        cls, exc: SpecError, *, under: tuple[str | int, ...] = ("body",), message: str | None = None
    ) -> Unprocessable:
        """The 422 a models.SpecError is to the user: its message (or `message`, which should
        include it), its loc placed `under` where the spec sits in the request."""
        return cls(exc.message if message is None else message, loc=(*under, *exc.loc))


class ServiceUnavailable(FitserveError):
    status_code = 503
    code = "unavailable"


# An error message names the problem and the fix; one longer than this is echoing what the client
# sent (a 30 MB string in a layer's activation came back whole in a 60 MB 422). The head names
# the problem, the tail usually says how to fix it: both are kept.
MAX_DETAIL = 2000


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """`text` cut in the middle to at most ~`limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 2 // 3], text[-(limit // 3) :]
    return f"{head} [... {len(text) - len(head) - len(tail):,} characters left out ...] {tail}"


def shown(value: object, limit: int = 60) -> str:
    """repr of a value the client sent, for a message: short enough to read at a glance."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def error_body(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": clip(message), "code": code, **extra}


def _loc_text(loc: tuple[Any, ...] | list[Any]) -> str:
    """("body", "layers", 0, "units") -> "body.layers[0].units"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "request"


def _given(error: dict[str, Any]) -> str:
    """The value the client sent, when it is short enough to echo: a typo is found at a glance
    ("activation: Input should be 'relu', ... (got 'relu2')"). repr keeps NUL and lone
    surrogates printable; datasets and other long values are never echoed."""
    value = error.get("input")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    text = repr(value)
    return f" (got {text})" if len(text) <= 60 and error.get("type") != "missing" else ""


def validation_message(errors: list[dict[str, Any]]) -> str:
    shown = [
        f"{_loc_text(e.get('loc', ()))}: {e.get('msg', 'invalid')}{_given(e)}" for e in errors[:5]
    ]
    if len(errors) > 5:
        shown.append(f"... and {len(errors) - 5} more")
    return "; ".join(shown)


def _clip_loc(loc: Any) -> list[Any]:
    # A location may hold a field name the client made up, of any length.
    return [p if isinstance(p, int) else clip(str(p), 200) for p in loc]


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The input values are left out: they may be huge (a dataset) or not JSON (NaN, bytes).
    return [
        {"loc": _clip_loc(e.get("loc", ())), "msg": clip(str(e.get("msg", "")))}
        for e in errors[:50]
    ]


async def _fitserve_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FitserveError)
    extra: dict[str, Any] = {}
    if isinstance(exc, Unprocessable) and exc.loc:
        extra["errors"] = [{"loc": _clip_loc(exc.loc), "msg": clip(exc.message)}]
    return JSONResponse(
        error_body(exc.message, exc.code, **extra), status_code=exc.status_code, headers=exc.headers
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    return JSONResponse(
        error_body(validation_message(errors), "validation_error", errors=_clean_errors(errors)),
        status_code=422,
    )


_STARLETTE_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def allowed_methods(request: Request) -> str:
    """Every method the request's path takes, across all the routes that match it: Starlette's
    own 405 lists only the first matching route's (GET /v1/jobs and POST /v1/jobs are two)."""
    try:  # FastAPI with lazily included routers: resolve them to their routes
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(request.app.routes))
    except ImportError:
        routes = list(request.app.routes)
    methods: set[str] = set()
    for route in routes:
        path, route_methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path and route_methods and compile_path(path)[0].match(request.url.path):
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405 and (allow := allowed_methods(request)):
        headers["Allow"] = allow
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = "no such route; the API lives under /v1 (see /docs)"
    elif exc.status_code == 405:
        message = "this route does not take that method (see /docs for the methods it takes)"
    else:
        message = str(exc.detail)
    code = _STARLETTE_CODES.get(exc.status_code, "http_error")
    return JSONResponse(error_body(message, code), status_code=exc.status_code, headers=headers)


DATABASE_DOWN = "the database is not answering (or is busy); try again in a few seconds"
# What `_database_down` answers, for what is raised outside a route (a middleware's key check).
DATABASE_DOWN_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database error: %s", exc)
    return JSONResponse(
        error_body(DATABASE_DOWN, "unavailable"), status_code=503, headers={"Retry-After": "2"}
    )


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    # Reached only when a concurrent request changed the same rows between our check and our write.
    log.info("integrity error: %s", exc)
    return JSONResponse(
        error_body(
            "the request clashed with a concurrent change (for example the dataset was deleted); "
            "reload and try again",
            "conflict",
        ),
        status_code=409,
    )


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    log.info("data error: %s", exc)
    return JSONResponse(
        error_body(
            "the database cannot store a value in this request (for example a NUL character "
            "in a name); remove it and try again",
            "unprocessable",
        ),
        status_code=422,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FitserveError, _fitserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.IntegrityError, _integrity_error)
    app.add_exception_handler(sa_exc.DataError, _data_error)
    for error in DATABASE_DOWN_ERRORS:
        app.add_exception_handler(error, _database_down)
