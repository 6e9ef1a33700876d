"""GET /metrics: the listed Prometheus metrics, with values, after a real job ran and predicted;
and the key rule (open only in keyless loopback mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.auth import create_key
from app.config import Settings
from app.main import create_app
from tests.ux.conftest import LiveServer


def scrape(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family: Any, suffix: str = "", **labels: str) -> float:
    for sample in family.samples:
        if sample.name == family.name + suffix and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return float(sample.value)
    raise AssertionError(f"no sample {family.name}{suffix} {labels}")


def test_metrics_after_a_job_and_a_prediction(
    live_server: LiveServer, trained_job: dict[str, Any]
) -> None:
    predict = httpx.post(
        f"{live_server.url}/v1/models/{trained_job['model_id']}/predict",
        json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
        timeout=10,
    )
    assert predict.status_code == 200, predict.text
    response = httpx.get(f"{live_server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = scrape(response.text)

    assert value(families["fitserve_jobs"], status="succeeded") >= 1
    assert value(families["fitserve_queue_depth"]) >= 0
    assert value(families["fitserve_epochs"], "_total") >= trained_job["epochs"]
    assert value(families["fitserve_training_seconds"], "_total") > 0
    assert value(families["fitserve_epochs_per_second"]) >= 0
    assert value(families["fitserve_prediction_seconds"], "_count") >= 1
    assert value(families["fitserve_prediction_seconds"], "_sum") > 0
    assert value(families["fitserve_workers_busy"]) >= 0
    for name in (
        "fitserve_worker_heartbeat_timestamp_seconds",
        "fitserve_worker_heartbeat_age_seconds",
        "fitserve_event_streams_open",
    ):
        assert name in families


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def keyed_app(sqlite_url: str) -> AsyncIterator[Any]:
    app = create_app(Settings(database_url=sqlite_url, require_api_keys=True))
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.anyio
async def test_metrics_needs_a_key_when_keys_are_required(keyed_app: Any) -> None:
    with keyed_app.state.sessionmaker.begin() as session:
        _, secret = create_key(session, name="prometheus")
    transport = httpx.ASGITransport(app=keyed_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
        assert allowed.status_code == 200
        assert value(scrape(allowed.text)["fitserve_jobs"], status="queued") == 0
