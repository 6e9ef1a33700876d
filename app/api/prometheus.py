"""GET /metrics: the Prometheus text format of the registry app/prometheus.py builds."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.api.deps import OwnerDep
from app.schemas import UNAUTHORIZED

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    description="Jobs by status, queue depth, epochs per second, training seconds, prediction "
    "latency, worker heartbeats — in the Prometheus text format.",
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        **UNAUTHORIZED,
    },
)
def metrics(request: Request, owner: OwnerDep) -> Response:
    del owner  # the key check is the point; the figures are totals
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
