"""An app per test database, driven through httpx against the ASGI app with its lifespan run
(engine, sessionmaker, model cache, built-in datasets), on SQLite and on Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.main import create_app

T = TypeVar("T")
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
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


class Rows:
    """Direct looks at the app's database, each in its own short transaction (on SQLite every
    transaction takes the write lock, so a test must never hold one open across a request)."""

    def __init__(self, sessionmaker: sessionmaker[Session]) -> None:
        self.sessionmaker = sessionmaker

    def get(self, table: type[T], key: Any) -> T | None:
        with self.sessionmaker() as session:
            return session.get(table, key)

    def count(self, table: type[Any], *where: Any) -> int:
        with self.sessionmaker() as session:
            return session.scalar(select(func.count()).select_from(table).where(*where)) or 0

    def begin(self) -> Any:
        """A session that commits on leaving the block."""
        return self.sessionmaker.begin()


@pytest.fixture
def db(app: Any) -> Rows:
    return Rows(app.state.sessionmaker)


def iris_csv() -> bytes:
    return (DATA / "iris.csv").read_bytes()


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "code"}, body
    for word in words:
        assert word.lower() in body["detail"].lower(), (word, body["detail"])
    return body
