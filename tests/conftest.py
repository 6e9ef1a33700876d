"""Database fixtures shared by every test directory, and the `cuda` marker.

Tests marked `cuda` need a CUDA GPU: they skip without one, except under `make test-gpu`
(FITSERVE_REQUIRE_CUDA=1), where a missing GPU stops the run with an error instead.

`database_url` runs a test on SQLite (a fresh file) and again on the real Postgres (a fresh
database copied from a migrated template, so every test starts from `upgrade head` in ~50 ms).

What the suite needs from the machine — the Postgres at FITSERVE_TEST_POSTGRES_URL, headless
Chromium, a PostgreSQL server install for throwaway servers — goes through `missing()`: with
CI=true a missing part ends the run with a message naming it (a green CI run never hides
skipped Postgres or browser tests); elsewhere the tests that need it skip, all under one
summary line per missing part.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from typing import Any, NoReturn

import psycopg
import pytest
import uvicorn

from app.config import Settings
from app.db import upgrade_head
from tests.throwaway_postgres import ThrowawayPostgres, server_bindir

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


CHROMIUM = "/usr/bin/chromium"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


_MISSING: set[str] = set()  # the skip messages `missing()` gave


def missing(what: str) -> NoReturn:
    """Skip the test for lack of `what` — or, with CI=true, end the whole run saying so.

    The skips are reported at this one place (see pytest_runtest_makereport), so pytest's -ra
    summary folds every test skipped for the same missing part into a single line."""
    if in_ci():
        pytest.exit(f"CI=true but {what}: install or start it (.ci/run does both)", returncode=3)
    _MISSING.add(what)
    pytest.skip(what)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        _, _, message = report.longrepr
        if message.removeprefix("Skipped: ") in _MISSING:
            report.longrepr = (__file__, missing.__code__.co_firstlineno, message)
    return report


@cache
def postgres_problem() -> str | None:
    """Why the Postgres at POSTGRES_URL can't be used, or None when it answers."""
    try:
        with psycopg.connect(_libpq_url(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"Postgres does not answer at {POSTGRES_URL} ({first})"


def postgres_available() -> bool:
    return postgres_problem() is None


def require_postgres() -> None:
    if (problem := postgres_problem()) is not None:
        missing(problem)


@cache
def chromium_problem() -> str | None:
    """Why headless Chromium can't run here, or None when `chromium --version` answers."""
    if shutil.which(CHROMIUM) is None:
        return f"headless Chromium ({CHROMIUM}) is not installed"
    try:
        subprocess.run([CHROMIUM, "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"headless Chromium ({CHROMIUM}) does not run: {exc}"
    return None


def require_chromium() -> str:
    if (problem := chromium_problem()) is not None:
        missing(problem)
    return CHROMIUM


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI, check every outside part before the first test, so a run fails in seconds."""
    if not in_ci():
        return
    problems = [p for p in (postgres_problem(), chromium_problem()) if p is not None]
    if server_bindir() is None:
        problems.append("no PostgreSQL server binaries (initdb, pg_ctl) for throwaway servers")
    if problems:
        pytest.exit("CI=true but " + "; ".join(problems) + ": install or start them "
                    "(.ci/run does both)", returncode=3)  # fmt: skip


def _admin(sql: str) -> None:
    with psycopg.connect(_libpq_url(POSTGRES_URL), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    require_postgres()
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


@pytest.fixture(scope="session")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A Postgres server of the tests' own (initdb in a temporary directory, its own port), for
    the tests that stop, restart or break a server: never the shared one."""
    bindir = server_bindir()
    if bindir is None:
        missing("no PostgreSQL server binaries (initdb, pg_ctl) for a throwaway server")
    server = ThrowawayPostgres(bindir)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def throwaway_postgres_url(throwaway_postgres: ThrowawayPostgres) -> Iterator[str]:
    """A fresh, migrated database on the throwaway server (SQLAlchemy URL, psycopg 3 driver)."""
    name = f"fitserve_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(throwaway_postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    url = Settings(database_url=_with_database(throwaway_postgres.url, name)).database_url
    upgrade_head(url)
    yield url


_DATABASE_FIXTURES = {
    "sqlite": "sqlite_url",
    "postgres": "postgres_url",
    "throwaway_postgres": "throwaway_postgres_url",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on Postgres (or, parametrized indirectly with
    "throwaway_postgres", on a server of the test's own)."""
    return request.getfixturevalue(_DATABASE_FIXTURES[request.param])


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database shared by one module's tests, on SQLite and again on Postgres.
    The tests that share it check row-count differences, never absolute counts."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('module')}/fitserve.db"
        upgrade_head(url)
        yield url
        return
    template = request.getfixturevalue("postgres_template")
    name = f"fitserve_module_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {template}")
    yield Settings(database_url=_with_database(POSTGRES_URL, name)).database_url
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def live_server() -> Callable[[Any], AbstractContextManager[str]]:
    """`with live_server(app) as url:` serves app over real HTTP for the block."""
    return serve
