"""POST /v1/networks/summary: Keras' model.summary() for a spec, before anything trains."""

from __future__ import annotations

from fastapi import APIRouter

import models
from app.api.deps import SettingsDep
from app.auth import OwnerDep
from app.schemas import ErrorResponse, NetworkSummary
from app.services.jobs import check_params

router = APIRouter(prefix="/v1/networks", tags=["networks"])


@router.post(
    "/summary",
    response_model=NetworkSummary,
    summary="Layers, output shapes and parameter counts of a network spec",
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def network_summary(
    network: models.NetworkSpec, owner: OwnerDep, settings: SettingsDep
) -> NetworkSummary:
    del owner  # authenticated like every route; a summary reads no rows
    check_params(network, settings)
    return NetworkSummary.model_validate(models.summary(network).model_dump())
