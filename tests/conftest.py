"""Database fixtures shared by every test directory, and the `cuda` marker.

Tests marked `cuda` need a CUDA GPU: they skip without one, except under `make test-gpu`
(FITSERVE_REQUIRE_CUDA=1), where a missing GPU stops the run with an error instead.

`database_url` runs a test on SQLite (a fresh file) and again on the real Postgres (a fresh
database copied from a migrated template, so every test starts from `upgrade head` in ~50 ms).
Postgres tests skip when FITSERVE_TEST_POSTGRES_URL does not answer.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache

import psycopg
import pytest

from app.config import Settings
from app.db import upgrade_head

REQUIRE_CUDA_ENV = "FITSERVE_REQUIRE_CUDA"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU (skipped without one; make test-gpu fails without one)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA_ENV) == "1":
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise pytest.UsageError(
            f"{len(cuda_tests)} CUDA tests selected, {REQUIRE_CUDA_ENV}=1, and no CUDA device "
            f"is usable (torch {torch.__version__}, {build}): run them on a machine with a GPU"
        )
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make test-gpu runs it)")
    for item in cuda_tests:
        item.add_marker(skip)


POSTGRES_URL = os.environ.get(
    "FITSERVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _with_database(url: str, name: str) -> str:
    base, _, _ = _libpq_url(url).rpartition("/")
    return f"{base}/{name}"


@cache
def postgres_available() -> bool:
    try:
        with psycopg.connect(_libpq_url(POSTGRES_URL), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _admin(sql: str) -> None:
    with psycopg.connect(_libpq_url(POSTGRES_URL), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    if not postgres_available():
        pytest.skip(f"Postgres does not answer at {POSTGRES_URL}")
    name = f"fitserve_template_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name}")
    upgrade_head(Settings(database_url=_with_database(POSTGRES_URL, name)).database_url)
    yield name
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh, migrated Postgres database for one test (SQLAlchemy URL, psycopg 3 driver)."""
    name = f"fitserve_test_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {postgres_template}")
    yield Settings(database_url=_with_database(POSTGRES_URL, name)).database_url
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A fresh, migrated SQLite file for one test."""
    url = f"sqlite:///{tmp_path}/fitserve.db"
    upgrade_head(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on Postgres."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)
