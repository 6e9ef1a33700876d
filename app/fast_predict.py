"""`POST /v1/models/{id}/predict` answered without FastAPI's per-request machinery, where it can be.

For a 139-parameter network the model runs in ~60 µs; routing among the API's routes, solving
the route's dependencies, building a Request and hopping to a worker thread cost several times
that (bench/RESULTS.md). `FastPredictMiddleware` sits just inside `RequestLimitsMiddleware` (so
the body is already bounded and checked for non-finite numbers) and answers a predict request
itself when all of this holds:

- the model is in the app's model cache and belongs to the caller (one `owner_for` call: the
  same key check as the route's dependency);
- the body is declared JSON (Content-Type) and `PredictRequest` accepts it, with no more rows
  than the limit, each as wide as the model's input, and the outputs are finite.

Anything else is handed on, untouched, to the documented route in app/api/models.py, which
loads the model on a cache miss and answers every error (a key check the database can't answer
included: the route's 503). So this layer only ever sends a 200, and the one it sends is the
route's (`tests/api/test_fast_predict.py` holds the two side by side). Small requests run inline
on the event loop — under ~1 M multiply-adds a forward pass takes less than the thread hop
would — larger ones in the thread pool, as the route does.
"""

from __future__ import annotations

import re

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.auth import owner_for
from app.errors import FitserveError
from app.inference import encode_predictions
from app.limits import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    content_type,
    is_json_media_type,
    replay,
)
from app.metrics import FAST_PREDICTIONS
from app.schemas import PredictRequest
from app.services import models as service

_PATH = re.compile(r"/v1/models/([0-9a-f]{32})/predict")
# Multiply-adds (parameters x rows) below which a prediction runs on the event loop.
_INLINE_WORK = 1 << 20


class FastPredictMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        match = _PATH.fullmatch(_route_path(scope)) if post else None
        if match is None or not _declares_json(scope):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        content = None if body is None else await _answer(scope, match.group(1), body)
        if content is None:
            await self.app(scope, replay(messages, receive), send)
            return
        headers = [  # as the route's Response writes them, in its order
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        FAST_PREDICTIONS.inc()


def _route_path(scope: Scope) -> str:
    """The path as the router matches it: behind a proxy's prefix (uvicorn --root-path) the
    scope's path starts with the root path."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _declares_json(scope: Scope) -> bool:
    # FastAPI parses a body as JSON only when its Content-Type says so: without one, the route
    # answers 422, so such a request is the route's.
    value = content_type(scope)
    return value is not None and is_json_media_type(value)


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message up to the body's end, and the body (None if the client went away)."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


async def _answer(scope: Scope, model_id: str, body: bytes) -> bytes | None:
    """The route's 200 body, or None where the route must answer (cache miss, any error)."""
    state = scope["app"].state
    header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    try:
        owner = await owner_for(
            None if header is None else header.decode("latin-1"),
            state.settings,
            state.engine,
        )
        cached = service.cached_model(state.model_cache, owner=owner, model_id=model_id)
        if cached is None:
            return None
        request = PredictRequest.model_validate_json(body)
        service.check_rows(request, state.settings)
        model, facts = cached
        if model.n_parameters * len(request.inputs) < _INLINE_WORK:
            outputs, labels = service.run_prediction(model, facts, request)
        else:
            outputs, labels = await run_in_threadpool(service.run_prediction, model, facts, request)
    except (FitserveError, ValidationError, SQLAlchemyError):
        # A database error can only come from checking a key: the route meets it again and
        # answers 503 through the app's handlers, which do not wrap this layer.
        return None
    return encode_predictions(outputs, labels)
