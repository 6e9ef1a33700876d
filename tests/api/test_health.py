"""GET /health and the one error shape for routes and methods that don't exist."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.api.conftest import assert_error

pytestmark = pytest.mark.anyio


async def test_health_reports_the_database(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == ("postgresql" if settings.is_postgres else "sqlite")


async def test_health_does_not_wait_for_a_writer(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """On SQLite a transaction that may write begins IMMEDIATE, taking the one write lock; a
    dataset upload holds it while its features are written (~0.5 s for 72 MB). /health and OIP's
    /v2/health/ready only read, so they begin deferred and answer beside the writer instead of
    queueing behind it (before, this waited the whole 30 s busy timeout, then was a 503)."""
    if settings.is_postgres:
        pytest.skip("Postgres has no database-wide write lock")
    path = settings.database_url.split("///", 1)[1]
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE datasets SET name = name")
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 200
    finally:
        writer.execute("ROLLBACK")
        writer.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-dir-for-fitserve/fitserve.db",
        # Nothing listens on port 1: connection refused at once.
        pytest.param("postgresql://postgres@127.0.0.1:1/postgres", marks=pytest.mark.postgres),
    ],
)
async def test_health_is_503_when_the_database_is_down(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(database_url=url))
    async with app.router.lifespan_context(app):  # starts anyway, and says why in the log
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            assert_error(await client.get("/health"), 503, "database")
            # Any route that needs the database answers 503 too, never a 500.
            body = assert_error(await client.get("/v1/datasets"), 503, "database")
            assert body["code"] == "unavailable"
    assert "fitserve migrate" in caplog.text


async def test_unknown_route_and_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    assert assert_error(await client.get("/v1/nothing"), 404, "/v1")["code"] == "not_found"
    body = assert_error(await client.put("/health"), 405, "method")
    assert body["code"] == "method_not_allowed"
    # Allow names every method of the path, though each method is a route of its own
    for path, allow in [("/v1/jobs", "GET, POST"), ("/v1/datasets", "GET, POST"),
                        ("/v1/datasets/" + "0" * 32, "DELETE, GET")]:  # fmt: skip
        response = await client.request("OPTIONS", path)
        assert response.status_code == 405 and response.headers["allow"] == allow, path


async def test_create_app_reads_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("FITSERVE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("FITSERVE_MODEL_CACHE_SIZE", "3")
    app = create_app()  # as `uvicorn --factory app.main:create_app` calls it
    assert app.state.settings.database_url == sqlite_url
    async with app.router.lifespan_context(app):
        assert app.state.model_cache.capacity == 3
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            assert (await client.get("/health")).json()["database"] == "sqlite"
