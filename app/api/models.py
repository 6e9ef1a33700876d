"""/v1/models: read, list, weights download, predict."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.api.deps import SessionDep
from app.auth import OwnerDep
from app.schemas import (
    UNAUTHORIZED,
    ErrorResponse,
    ModelList,
    ModelRead,
    PredictRequest,
    PredictResponse,
)
from app.services import models as service

router = APIRouter(prefix="/v1/models", tags=["models"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such model (or not yours)."},
}


@router.get(
    "", response_model=ModelList, summary="Your models, newest first", responses={401: _ERRORS[401]}
)
def list_models(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Skip this many.")] = 0,
) -> ModelList:
    return service.list_models(session, owner=owner, limit=limit, offset=offset)


@router.get(
    "/{model_id}",
    response_model=ModelRead,
    summary="A model's spec, summary, final metrics, classes and standardization",
    responses=_ERRORS,
)
def get_model(model_id: str, request: Request, session: SessionDep, owner: OwnerDep) -> ModelRead:
    cache = request.app.state.model_cache
    return service.get_model(session, owner=owner, model_id=model_id, cache=cache)


@router.get(
    "/{model_id}/weights",
    summary="The trained weights as a safetensors file (spec and standardization in its metadata)",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "safetensors bytes.",
        },
    },
)
def get_weights(model_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    data = service.get_weights(session, owner=owner, model_id=model_id)
    return Response(
        content=data,
        media_type="application/octet-stream",
        # model ids are hex, so the file name carries no user text
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.safetensors"'},
    )


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    summary="Outputs (and class labels) for rows of features; dropout is off",
    responses={
        **_ERRORS,
        413: {"model": ErrorResponse, "description": "Too many rows."},
        422: {"model": ErrorResponse, "description": "Rows of the wrong width."},
    },
)
def predict(model_id: str, body: PredictRequest, request: Request, owner: OwnerDep) -> Response:
    # Requests for a model already cached are mostly answered before they get here, by
    # app/fast_predict.py; this route loads models and gives every error.
    state = request.app.state
    # Read-only, and a cached model needs no query: a plain session, opened lazily, instead of
    # SessionDep and SettingsDep, whose sync dependencies each cost a thread-pool hop a request.
    with state.sessionmaker() as session:
        content = service.predict_json(
            session,
            owner=owner,
            model_id=model_id,
            body=body,
            settings=state.settings,
            cache=state.model_cache,
        )
    # JSON bytes straight from the output arrays: PredictResponse's schema, without building a
    # model of Python floats and validating it again on the way out
    return Response(content=content, media_type="application/json")
