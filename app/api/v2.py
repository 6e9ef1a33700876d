"""/v2: the Open Inference Protocol V2 (REST) beside /v1's JSON predict.

Server metadata and health, model metadata and readiness, and inference, each plain and under
/versions/{version}; inference bodies in JSON or with the binary tensor data extension, read as
JSON when they come without a Content-Type (as tritonclient sends them). Every /v2 error is the
protocol's `{"error": message}` (OipErrorMiddleware), with 400 where /v1 would say 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request, Response
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.api.deps import ModelCacheDep, OwnerDep, SessionDep, SettingsDep
from app.api.health import server_version
from app.config import Settings
from app.db import connect_read_only
from app.errors import BadRequest
from app.inference import ModelCacheT
from app.limits import ASGIApp, Message, Receive, Scope, Send
from app.oip_tensors import HEADER_LENGTH
from app.schemas import MODEL_REF_DOC, OIP_VERSION_DOC
from app.services import oip as service

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
ModelName = Annotated[str, Path(description=MODEL_REF_DOC)]
OipVersion = Annotated[str, Path(description=OIP_VERSION_DOC)]


def _error(description: str) -> dict[str, Any]:
    return {"model": service.OipError, "description": description}


_EMPTY: dict[str, Any] = {"content": {}}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("No or unknown API key."),
    404: _error("No such model or version (or not yours)."),
}


@router.get("", response_model=service.ServerMetadata, summary="OIP server metadata")
def server_metadata() -> service.ServerMetadata:
    return service.server_metadata(server_version())


@router.get(
    "/health/live",
    summary="OIP server live: 200 while the server answers (empty body)",
    response_class=Response,
    responses={200: {"description": "Live.", **_EMPTY}},
)
def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/health/ready",
    summary="OIP server ready: 200 when the database answers, 400 when it doesn't",
    response_class=Response,
    responses={
        200: {"description": "Ready (empty body).", **_EMPTY},
        400: _error("Not ready: the database is not answering."),
    },
)
def ready(request: Request) -> Response:
    try:
        with connect_read_only(request.app.state.engine) as connection:
            connection.execute(text("SELECT 1"))
    except sa_exc.SQLAlchemyError:
        raise BadRequest(
            "not ready: the database is not answering; check FITSERVE_DATABASE_URL"
        ) from None
    return Response(status_code=200)


async def _raw_body(request: Request) -> bytes:
    return await request.body()


HeaderLength = Annotated[
    str | None,
    Header(
        alias=HEADER_LENGTH,
        pattern=r"^[0-9]{1,12}$",
        description="Binary tensor data extension: the JSON header's length in bytes; the "
        "binary tensors follow it, as the inputs' parameters.binary_data_size say.",
    ),
]


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "An inference request as JSON (a body without Content-Type is read as "
        "JSON), or with the binary tensor data extension: the JSON header, then the tensors.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The outputs; with binary outputs the body is the JSON header followed by "
        f"the tensors, and {HEADER_LENGTH} gives the header's length.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {
            HEADER_LENGTH: {
                "description": "Set when the body has binary outputs.",
                "schema": {"type": "string", "pattern": r"^[0-9]+$"},
            }
        },
    },
    **_MODEL_ERRORS,
    400: _error("A request that can't be read, or a tensor that doesn't fit the model."),
    413: _error("Too many rows, or a body over FITSERVE_MAX_BODY_BYTES."),
}


Body = Annotated[bytes, Depends(_raw_body)]
_META: dict[str, Any] = {
    "response_model": service.ModelMetadata,
    "responses": _MODEL_ERRORS,
}
_READY: dict[str, Any] = {
    "response_class": Response,
    "responses": {200: {"description": "Ready (empty body).", **_EMPTY}, **_MODEL_ERRORS},
}
_INFER: dict[str, Any] = {
    "response_class": Response,
    "responses": _INFER_RESPONSES,
    "openapi_extra": _INFER_BODY,
}


@router.get("/models/{name}", summary="OIP model metadata: input and output tensors", **_META)
def model_metadata(
    name: ModelName, session: SessionDep, owner: OwnerDep, cache: ModelCacheDep
) -> service.ModelMetadata:
    return service.metadata(session, owner=owner, name=name, version=None, cache=cache)


@router.get(
    "/models/{name}/versions/{version}", summary="OIP model metadata of one version", **_META
)
def version_metadata(
    name: ModelName, version: OipVersion, session: SessionDep, owner: OwnerDep, cache: ModelCacheDep
) -> service.ModelMetadata:
    return service.metadata(session, owner=owner, name=name, version=version, cache=cache)


@router.get(
    "/models/{name}/ready", summary="OIP model ready: 200 once loaded (empty body)", **_READY
)
def model_ready(
    name: ModelName, session: SessionDep, owner: OwnerDep, cache: ModelCacheDep
) -> Response:
    service.ready(session, owner=owner, name=name, version=None, cache=cache)
    return Response(status_code=200)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="OIP model ready, one version: 200 once loaded (empty body)",
    **_READY,
)
def version_ready(
    name: ModelName, version: OipVersion, session: SessionDep, owner: OwnerDep, cache: ModelCacheDep
) -> Response:
    service.ready(session, owner=owner, name=name, version=version, cache=cache)
    return Response(status_code=200)


@dataclass(frozen=True)
class _InferCall:
    """What an infer route passes on besides the model's name and version."""

    body: bytes
    header_length: str | None
    session: Session
    owner: str | None
    settings: Settings
    cache: ModelCacheT

    def run(self, name: str, version: str | None) -> Response:
        reply = service.infer(
            self.session,
            owner=self.owner,
            name=name,
            version=version,
            body=self.body,
            header_length=self.header_length,
            settings=self.settings,
            cache=self.cache,
        )
        if not reply.binary:
            return Response(content=reply.header, media_type="application/json")
        return Response(
            content=reply.header + reply.binary,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(reply.header))},
        )


def _infer_call(
    body: Body,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    cache: ModelCacheDep,
    header_length: HeaderLength = None,
) -> _InferCall:
    return _InferCall(body, header_length, session, owner, settings, cache)


InferCall = Annotated[_InferCall, Depends(_infer_call)]


@router.post("/models/{name}/infer", summary="OIP inference: the outputs of /v1 predict", **_INFER)
def infer(name: ModelName, call: InferCall) -> Response:
    return call.run(name, None)


@router.post(
    "/models/{name}/versions/{version}/infer", summary="OIP inference, one version", **_INFER
)
def version_infer(name: ModelName, version: OipVersion, call: InferCall) -> Response:
    return call.run(name, version)


class OipErrorMiddleware:
    """Answers every /v2 error in the protocol's shape, `{"error": message}`, whichever layer
    raised it (the routes, the key check, routing's 404/405, app/limits.py), and with 400 where
    fitserve's /v1 says 422: OIP's status for a request it can't serve."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/v2" and not path.startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def reshaping_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                else:
                    start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_oip_error(send, start, b"".join(chunks))

        await self.app(scope, receive, reshaping_send)


async def _send_oip_error(send: Send, start: Message, body: bytes) -> None:
    try:
        document = orjson.loads(body)
        message = document["detail"] if isinstance(document, dict) else None
    except (orjson.JSONDecodeError, KeyError):
        message = None
    if not isinstance(message, str):
        message = body.decode("utf-8", "replace") or "the request failed"
    status = 400 if start["status"] == 422 else start["status"]
    payload = orjson.dumps({"error": message})
    headers = [
        (name, value)
        for name, value in start.get("headers", [])
        if name.lower() not in (b"content-length", b"content-type")
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
