"""`.ci/postgres-url` on a stock Debian PostgreSQL's authentication — peer on the socket, a
password (scram-sha-256) on 127.0.0.1 — served by a throwaway server, never the shared one."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import missing
from tests.throwaway_postgres import ThrowawayPostgres, server_bindir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def stock_debian_postgres() -> Iterator[ThrowawayPostgres]:
    if os.geteuid() != 0:
        pytest.skip("peer authentication as the postgres OS user needs root here")
    bindir = server_bindir()
    if bindir is None:
        missing("no PostgreSQL server binaries (initdb, pg_ctl) for a throwaway server")
    server = ThrowawayPostgres(bindir, auth=("--auth-local=peer", "--auth-host=scram-sha-256"))
    try:
        server.start()
        yield server
    finally:
        server.close()


def postgres_url(server: ThrowawayPostgres) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FITSERVE_TEST_POSTGRES_URL"}
    env |= {"PGPORT": str(server.port), "PGHOST": str(server.socket_dir)}
    return subprocess.run([str(ROOT / ".ci" / "postgres-url")], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.postgres
def test_ci_sets_up_a_password_role_where_loopback_needs_one(
    stock_debian_postgres: ThrowawayPostgres,
) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(stock_debian_postgres.url, connect_timeout=5).close()

    done = postgres_url(stock_debian_postgres)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith("postgresql://fitserve_ci:") and f":{stock_debian_postgres.port}/" in url
    # What the suite does with it: make a database from a template, connect to it, drop it.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE fitserve_ci_probe")
        conn.execute("CREATE DATABASE fitserve_ci_copy TEMPLATE fitserve_ci_probe")
        conn.execute("DROP DATABASE fitserve_ci_copy WITH (FORCE)")
        conn.execute("DROP DATABASE fitserve_ci_probe WITH (FORCE)")

    again = postgres_url(stock_debian_postgres)  # a second run re-keys the role it made
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() != url
    psycopg.connect(again.stdout.strip(), connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(url, connect_timeout=5).close()


def test_ci_uses_a_trusted_loopback_as_it_is(throwaway_postgres: ThrowawayPostgres) -> None:
    done = postgres_url(throwaway_postgres)
    assert (done.returncode, done.stdout.strip()) == (0, throwaway_postgres.url), done.stderr
    with psycopg.connect(throwaway_postgres.url) as conn:
        roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'fitserve_ci'")
        assert roles.fetchone() == (0,)  # nothing was set up where nothing was needed
