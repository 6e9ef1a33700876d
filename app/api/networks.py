"""/v1/networks: Keras' model.summary() for a spec before anything trains, and Keras Sequential
JSON imported as a spec or exported from one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

import models
from app.api.deps import OwnerDep, SettingsDep
from app.schemas import UNAUTHORIZED, ErrorResponse, KerasImport, NetworkSummary
from app.services import networks as service
from models.keras_export import to_keras_config
from models.spec import IRIS_NETWORK

router = APIRouter(prefix="/v1/networks")
NETWORKS: list[str | Any] = ["networks"]
INTEROP: list[str | Any] = ["interop"]

# A body that isn't UTF-8 JSON is FastAPI's 400 before any handler runs.
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    400: {"model": ErrorResponse, "description": "The body could not be parsed as JSON."},
}
_IRIS_KERAS = to_keras_config(models.NetworkSpec.model_validate(IRIS_NETWORK))


@router.post(
    "/summary",
    tags=NETWORKS,
    response_model=NetworkSummary,
    summary="Layers, output shapes and parameter counts of a network spec",
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def network_summary(
    network: models.NetworkSpec, owner: OwnerDep, settings: SettingsDep
) -> NetworkSummary:
    del owner  # authenticated like every route; a summary reads no rows
    return service.summarize(network, settings)


@router.post(
    "/import-keras",
    tags=INTEROP,
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
    return service.import_keras(keras_model, settings)


@router.post(
    "/export-keras",
    tags=INTEROP,
    summary="A fitserve spec as Keras Sequential JSON (load with keras.models.model_from_json)",
    responses={**_BODY_ERRORS, 422: {"model": ErrorResponse}},
)
def export_keras(network: models.NetworkSpec, owner: OwnerDep) -> dict[str, Any]:
    del owner
    return service.export_keras(network)
