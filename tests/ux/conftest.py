"""A live fitserve for the user-facing tests: uvicorn on a free loopback port and a separate
`fitserve worker` process, sharing one migrated SQLite file — the way a user runs it.

The stack is started once per test session (both processes import torch, which is the slow
part); tests make their own datasets and jobs and assert on those, never on global counts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.db import upgrade_head
from tests.conftest import require_chromium
from tests.ux.cdp import Browser

ROOT = Path(__file__).resolve().parents[2]
IRIS_CSV = ROOT / "app" / "data" / "iris.csv"
CLI = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]

# 4 -> 8 -> 3 on iris: small enough to train in seconds on a shared CPU, and learns well.
IRIS_NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
IRIS_TRAINING = {
    "loss": "sparse_categorical_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.02},
    "batch_size": 16,
    "validation_split": 0.2,
    "standardize": True,
    "seed": 1,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    database_url: str
    log_dir: Path

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, processes: list[subprocess.Popen[bytes]], server: LiveServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"a fitserve process exited ({process.args}):\n{server.logs()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"fitserve did not answer /health within 60 s:\n{server.logs()}")


def _server_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_DEVICE": "cpu",
        "FITSERVE_POLL_SECONDS": "0.1",
        # One thread per training process: on a busy 2-core machine two threads spin-wait for
        # each other (20 iris epochs: 18 s on two threads, 1.6 s on one).
        "FITSERVE_CPU_THREADS": "1",
    }


def _start_api(port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """uvicorn serving create_app() on 127.0.0.1:port."""
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return _start(cmd, log, env)


@pytest.fixture(scope="session")
def live_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, str]:
    tmp = tmp_path_factory.mktemp("live")
    database_url = f"sqlite:///{tmp}/fitserve.db"
    upgrade_head(database_url)
    env = _server_env(database_url)
    env.pop("FITSERVE_REQUIRE_API_KEYS", None)  # keyless loopback mode, as `make run` serves
    return env, tmp, database_url


@pytest.fixture(scope="session")
def live_api(live_env: tuple[dict[str, str], Path, str]) -> Iterator[LiveServer]:
    """uvicorn serving create_app() on a free loopback port; no worker (jobs stay queued)."""
    env, tmp, database_url = live_env
    port = free_port()
    server = LiveServer(f"http://127.0.0.1:{port}", database_url, tmp)
    api = _start_api(port, tmp / "api.log", env)
    try:
        _wait_healthy(server.url, [api], server)
        yield server
    finally:
        _stop(api)


@pytest.fixture(scope="session")
def live_server(
    live_api: LiveServer, live_env: tuple[dict[str, str], Path, str]
) -> Iterator[LiveServer]:
    """The live API plus a separate `fitserve worker` process on the same database."""
    env, tmp, database_url = live_env
    worker = _start([*CLI, "worker", "--database-url", database_url], tmp / "worker.log", env)
    try:
        time.sleep(0.5)
        if worker.poll() is not None:
            pytest.fail(f"`fitserve worker` exited at once:\n{live_api.logs()}")
        yield live_api
    finally:
        _stop(worker)


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_chromium()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    """Headless Chromium driven over the DevTools protocol, with its own profile."""
    browser = Browser(chromium, tmp_path / "profile")
    try:
        yield browser
    finally:
        browser.close()


def run_chromium(binary: str, url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no way out: every non-loopback request goes to a dead proxy, so a
    page that needs a CDN breaks here."""
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=127.0.0.1",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture(scope="session")
def trained_job(live_server: LiveServer) -> dict[str, object]:
    """One iris job trained to the end through the real worker, shared by the read-only tests."""
    from fitserve_client import FitserveClient

    with FitserveClient(live_server.url) as client:
        job = client.submit(IRIS_NETWORK, "iris", IRIS_TRAINING, name="ux iris", epochs=20)
        try:
            job = client.wait(job.id, timeout=120)
        except Exception as exc:  # show the server's side of the story
            pytest.fail(f"training the shared iris job failed: {exc}\n{live_server.logs()}")
    return job.model_dump()


@dataclass
class KeyedServer(LiveServer):
    """A live API with keys required, one key's secret, and the env to start a worker with."""

    secret: str
    env: dict[str, str]

    def start_worker(self) -> subprocess.Popen[bytes]:
        cmd = [*CLI, "worker", "--database-url", self.database_url]
        return _start(cmd, self.log_dir / "worker.log", self.env)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    """uvicorn serving create_app() with FITSERVE_REQUIRE_API_KEYS=true, as a deployment off
    loopback runs; no worker until the test starts one."""
    from app.auth import create_key
    from app.db import make_engine, make_sessionmaker

    tmp = tmp_path_factory.mktemp("keyed")
    database_url = f"sqlite:///{tmp}/fitserve.db"
    upgrade_head(database_url)
    engine = make_engine(database_url)
    with make_sessionmaker(engine).begin() as session:
        _, secret = create_key(session, name="dashboard")
    engine.dispose()
    env = {**_server_env(database_url), "FITSERVE_REQUIRE_API_KEYS": "true"}
    port = free_port()
    server = KeyedServer(f"http://127.0.0.1:{port}", database_url, tmp, secret, env)
    api = _start_api(port, tmp / "api.log", env)
    try:
        _wait_healthy(server.url, [api], server)
        yield server
    finally:
        _stop(api)
