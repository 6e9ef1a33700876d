"""An app per test database, driven through httpx against the ASGI app with its lifespan run
(engine, sessionmaker, model cache, built-in datasets), on SQLite and on Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from app.config import Settings
from app.main import create_app

DATA = Path(__file__).resolve().parents[2] / "app" / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def db(app: object) -> AsyncIterator[Session]:
    """A session on the app's database, to look at rows directly."""
    with app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        yield session  # type: ignore[misc]


def iris_csv() -> bytes:
    return (DATA / "iris.csv").read_bytes()


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "code"}, body
    for word in words:
        assert word.lower() in body["detail"].lower(), (word, body["detail"])
    return body
