"""A real uvicorn process for the security tests whose behaviour depends on the server's own
event loop (test_event_loop.py, test_big_bodies.py)."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def uvicorn_process(database_url: str, log: Path, limits: dict[str, int]) -> Iterator[str]:
    """The API in its own process (uvicorn, as deployed) on `database_url` with API keys required
    and `limits` as FITSERVE_* settings (the defaults for the rest), so that what the test's
    clients do costs the server no GIL time; yields its base URL once /health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "FITSERVE_DATABASE_URL": database_url,
        "FITSERVE_REQUIRE_API_KEYS": "true",
        **{f"FITSERVE_{k.upper()}": str(v) for k, v in limits.items()},
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-access-log", "--ws", "none"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def health_while(
    url: str, send: Callable[[httpx.Client], httpx.Response], rounds: int, timeout: float
) -> tuple[list[float], list[httpx.Response]]:
    """/health latencies, one probe every ~5 ms, while a client sends `send`'s request `rounds`
    times back to back (after one unmeasured round, so lazy imports, the helper process and
    caches are warm); and the responses, the unmeasured round's first.

    The probes time this process too, so its cyclic GC is collected, then frozen while they
    run (what existed before is left out of its collections): with torch and the app imported
    it holds ~430k objects, a full collection over them took 0.1-0.5 s here, and one that
    landed on a probe was timed as the server's stall (and, with under 100 probes, was the
    p99)."""
    latencies: list[float] = []
    responses: list[httpx.Response] = []
    done = threading.Event()

    def sender() -> None:
        try:
            with httpx.Client(base_url=url, timeout=timeout) as http:
                for _ in range(rounds):
                    responses.append(send(http))
        finally:
            done.set()

    with httpx.Client(base_url=url, timeout=timeout) as http:
        responses.append(send(http))
        assert http.get("/health").status_code == 200
        gc.collect()
        gc.freeze()
        try:
            thread = threading.Thread(target=sender, daemon=True)
            thread.start()
            while not done.is_set():
                start = time.perf_counter()
                assert http.get("/health").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.005)
            thread.join()
        finally:
            gc.unfreeze()
    return latencies, responses
