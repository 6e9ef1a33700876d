"""/v2/models/{id}: the Open Inference Protocol V2 (REST) beside /v1's JSON predict.

Errors carry the protocol's "error" message next to fitserve's usual {"detail", "code"}, so OIP
clients (tritonclient, KServe's) show the message too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.api.deps import SessionDep, SettingsDep
from app.auth import OwnerDep
from app.errors import FitserveError
from app.schemas import UNAUTHORIZED, ErrorResponse
from app.services import oip as service


class _OipRoute(APIRoute):
    """Runs the app's own error handler, then adds OIP's "error" key to its body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (FitserveError, RequestValidationError) as exc:
                response = await _app_handler(request, exc)
                body = json.loads(bytes(response.body))
                headers = {
                    k: v for k, v in response.headers.items() if k.lower() != "content-length"
                }
                return JSONResponse(
                    {"error": body.get("detail"), **body},
                    status_code=response.status_code,
                    headers=headers,
                )

        return route


async def _app_handler(request: Request, exc: Exception) -> Any:
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return await handlers[cls](request, exc)
    raise exc


router = APIRouter(prefix="/v2/models", tags=["open inference protocol"], route_class=_OipRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such model (or not yours)."},
}


@router.get(
    "/{model_id}",
    response_model=service.ModelMetadata,
    summary="OIP model metadata: input and output tensors",
    responses=_ERRORS,
)
def model_metadata(
    model_id: str, request: Request, session: SessionDep, owner: OwnerDep
) -> service.ModelMetadata:
    cache = request.app.state.model_cache
    return service.metadata(session, owner=owner, model_id=model_id, cache=cache)


@router.get(
    "/{model_id}/ready",
    response_model=service.ModelReady,
    summary="OIP model readiness (loads the model into the predictor cache)",
    responses=_ERRORS,
)
def model_ready(
    model_id: str, request: Request, session: SessionDep, owner: OwnerDep
) -> service.ModelReady:
    cache = request.app.state.model_cache
    return service.ready(session, owner=owner, model_id=model_id, cache=cache)


@router.post(
    "/{model_id}/infer",
    response_model=service.InferenceResponse,
    summary="OIP inference: the same outputs as /v1/models/{id}/predict, as tensors",
    responses={
        **_ERRORS,
        400: {"model": ErrorResponse, "description": "The body could not be parsed as JSON."},
        413: {"model": ErrorResponse, "description": "Too many rows."},
        422: {"model": ErrorResponse, "description": "A tensor that doesn't fit the model."},
    },
)
def infer(
    model_id: str,
    body: service.InferenceRequest,
    request: Request,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> service.InferenceResponse:
    cache = request.app.state.model_cache
    return service.infer(
        session, owner=owner, model_id=model_id, body=body, settings=settings, cache=cache
    )
