"""Another key's rows don't exist for you on the routes added here: events, batch prediction and
the dashboard answer 404 (and list nothing), on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.auth import create_key
from app.config import Settings
from app.main import create_app
from app.queue.clock import db_now
from app.tables import Dataset, Job, Model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def keyed_app(database_url: str) -> AsyncIterator[Any]:
    app = create_app(Settings(database_url=database_url, require_api_keys=True))
    async with app.router.lifespan_context(app):
        yield app


@pytest.mark.anyio
async def test_other_keys_rows_are_not_found(keyed_app: Any) -> None:
    with keyed_app.state.sessionmaker.begin() as session:
        alice, alice_secret = create_key(session, name="alice")
        _, bob_secret = create_key(session, name="bob")
        dataset = Dataset(
            owner_id=alice.id, name="alice-data", task="classification", rows=0, n_features=1,
            feature_names=["x"], target_names=["y"], classes=["a", "b"], features=b"",
            targets=b"", sha256="0" * 64,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        job = Job(
            owner_id=alice.id, name="alice-job", dataset_id=dataset.id, network={}, training={},
            epochs=1, status="succeeded", finished_at=db_now(),
        )  # fmt: skip
        session.add(job)
        session.flush()
        model = Model(
            owner_id=alice.id, job_id=job.id, dataset_id=dataset.id, network={}, training={},
            task="classification", classes=["a", "b"], weights=b"",
        )  # fmt: skip
        session.add(model)
        session.flush()
        job_id, model_id = job.id, model.id

    transport = httpx.ASGITransport(app=keyed_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        bob = {"Authorization": f"Bearer {bob_secret}"}
        for method, path, body in (
            ("GET", f"/v1/jobs/{job_id}/events", None),
            ("POST", f"/v1/models/{model_id}/predict.csv", b"x\n1\n"),
            ("GET", f"/dashboard/jobs/{job_id}", None),
            ("GET", f"/dashboard/models/{model_id}", None),
        ):
            response = await client.request(method, path, content=body, headers=bob)
            assert response.status_code == 404, (path, response.text)
            assert "not found" in response.json()["detail"]
        listing = await client.get("/dashboard", headers=bob)
        assert listing.status_code == 200 and "alice-job" not in listing.text

        alice_headers = {"Authorization": f"Bearer {alice_secret}"}
        mine = await client.get("/dashboard", headers=alice_headers)
        assert "alice-job" in mine.text
        stream = await client.get(f"/v1/jobs/{job_id}/events", headers=alice_headers)
        assert stream.status_code == 200 and '"status":"succeeded"' in stream.text
