"""fitserve as a user runs it: `fitserve serve --workers 1` (uvicorn on a free loopback port plus a
separate worker process) over real HTTP, on a SQLite file and again on a fresh Postgres database.

One stack per database for the module (both processes import torch, the slow part); tests make
their own datasets and jobs and assert only on those.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import POSTGRES_URL, _admin, _with_database, require_postgres

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    url: str
    database_url: str
    log: Path
    client: httpx.Client

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                return job
            time.sleep(0.2)
        pytest.fail(f"job {job_id} did not finish in {timeout:.0f} s:\n{self.logs()}")

    def train(self, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = self.wait(response.json()["id"], timeout)
        assert job["status"] == "succeeded", f"{job['error']}\n{self.logs()}"
        return job


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # serve stops its API and worker children
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180  # two processes import torch; slow on a busy machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"`fitserve serve` exited with {process.returncode}:\n{log.read_text()[-6000:]}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"fitserve did not answer /health within 180 s:\n{log.read_text()[-6000:]}")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('e2e')}/fitserve.db"
        return
    require_postgres()
    name = f"fitserve_e2e_{uuid.uuid4().hex[:12]}"
    _admin(f"CREATE DATABASE {name}")
    try:
        yield _with_database(POSTGRES_URL, name)  # as users write it: postgresql://
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def stack(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`fitserve serve --workers 1` on a free port; `serve` migrates the database itself."""
    port = free_port()
    log = tmp_path_factory.mktemp("e2e-logs") / "serve.log"
    # One torch thread: two on two busy cores made 20 iris epochs take 18 s instead of 1.6 s.
    env = {
        **os.environ,
        "FITSERVE_DEVICE": "cpu",
        "FITSERVE_POLL_SECONDS": "0.1",
        "FITSERVE_CPU_THREADS": "1",
    }
    env.pop("FITSERVE_REQUIRE_API_KEYS", None)  # keyless loopback mode, as `make run` serves
    argv = [*CLI, "serve", "--workers", "1", "--port", str(port), "--database-url", database]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield Stack(url, database, log, client)
    finally:
        _stop(process)
