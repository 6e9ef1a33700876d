"""Keras and ONNX interop: import a Keras Sequential JSON as a spec, export a spec or a model's
spec back to it, and download a trained model as ONNX."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, Field

import models
from app.api.deps import SessionDep, SettingsDep
from app.auth import OwnerDep
from app.errors import Unprocessable
from app.schemas import UNAUTHORIZED, ErrorResponse, NetworkSummary
from app.services import models as model_service
from app.services.jobs import check_params
from models.keras_export import to_keras_config
from models.keras_json import from_keras_json
from models.onnx_export import to_onnx
from models.spec import IRIS_NETWORK

router = APIRouter(tags=["interop"])

_AUTH = UNAUTHORIZED
# A body that isn't UTF-8 JSON is FastAPI's 400 before any handler runs.
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    400: {"model": ErrorResponse, "description": "The body could not be parsed as JSON."},
}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: {"model": ErrorResponse, "description": "No such model (or not yours)."},
}
_IRIS_KERAS = to_keras_config(models.NetworkSpec.model_validate(IRIS_NETWORK))


class KerasImport(BaseModel):
    network: dict[str, Any] = Field(
        description="The fitserve spec: post it as `network` to /v1/jobs.",
        examples=[IRIS_NETWORK],
    )
    summary: NetworkSummary = Field(
        description="Its layers and Keras' parameter counts.",
        examples=[models.summary(IRIS_NETWORK).model_dump()],
    )


@router.post(
    "/v1/networks/import-keras",
    response_model=KerasImport,
    summary="A Keras Sequential model.to_json() as a fitserve spec, with its parameter counts",
    responses={
        **_BODY_ERRORS,
        422: {
            "model": ErrorResponse,
            "description": "A layer or option fitserve can't reproduce; the message names it.",
        },
    },  # fmt: skip
)
def import_keras(
    keras_model: Annotated[
        dict[str, Any] | str,
        Body(
            description="What Keras' model.to_json() returns: the JSON object as the body, or "
            "the to_json() string itself as a JSON string.",
            examples=[_IRIS_KERAS],
        ),
    ],
    owner: OwnerDep,
    settings: SettingsDep,
) -> KerasImport:
    del owner  # authenticated like every route; reads no rows
    try:
        network = from_keras_json(keras_model)
    except models.SpecError as exc:
        raise Unprocessable(exc.message, loc=("body", *exc.loc)) from None
    check_params(network, settings)
    summary = NetworkSummary.model_validate(models.summary(network).model_dump())
    return KerasImport(network=network.model_dump(mode="json", exclude_none=True), summary=summary)


@router.post(
    "/v1/networks/export-keras",
    summary="A fitserve spec as Keras Sequential JSON (load with keras.models.model_from_json)",
    responses={**_BODY_ERRORS, 422: {"model": ErrorResponse}},
)
def export_keras(network: models.NetworkSpec, owner: OwnerDep) -> dict[str, Any]:
    del owner
    return to_keras_config(network)


@router.get(
    "/v1/models/{model_id}/keras",
    summary="The model's network as Keras Sequential JSON (architecture only, as to_json())",
    responses=_MODEL_ERRORS,
)
def model_keras(
    model_id: str, request: Request, session: SessionDep, owner: OwnerDep
) -> dict[str, Any]:
    cache = request.app.state.model_cache
    model = model_service.get_model(session, owner=owner, model_id=model_id, cache=cache)
    return to_keras_config(models.NetworkSpec.model_validate(model.network), name=f"m{model.id}")


@router.get(
    "/v1/models/{model_id}/onnx",
    summary="The trained model as ONNX: standardization, network and final activation in one "
    "graph; input 'input' [batch, n_features] float32, output 'output'",
    response_class=Response,
    responses={
        **_MODEL_ERRORS,
        200: {
            "content": {"application/onnx": {"schema": {"type": "string", "format": "binary"}}},
            "description": "ONNX model bytes (opset 17); onnxruntime returns /predict's outputs.",
        },
    },
)
def model_onnx(model_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    weights = model_service.get_weights(session, owner=owner, model_id=model_id)
    return Response(
        content=to_onnx(weights),
        media_type="application/onnx",
        # model ids are hex, so the file name carries no user text
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.onnx"'},
    )
