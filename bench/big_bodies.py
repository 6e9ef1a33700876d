"""/health latency while the largest JSON bodies are in flight, the old way and the new, side by
side on one machine: a 60 MB JSON dataset, a 30 MB import-keras body and a 63 MB body to
POST /v1/jobs, each sent `--rounds` times back to back while /health is probed every ~5 ms.

- "in the API": JSON datasets parsed in a thread of the API process and no JSON cap below the
  64 MiB body limit (FITSERVE_INTAKE_IN_PROCESS_BYTES and FITSERVE_MAX_JSON_BODY_BYTES set to
  64 MiB): what the server did before;
- "now": the defaults: a dataset body over 1 MiB parsed in a helper process (app/intake.py), the
  JSON of routes that take specs held to 1 MiB (413 while it streams).

Each variant is its own uvicorn process on its own SQLite file, run one after the other.

    .venv/bin/python bench/big_bodies.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from app.db import upgrade_head

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000
VARIANTS = {
    "in the API": {
        "FITSERVE_INTAKE_IN_PROCESS_BYTES": str(64 * 1024 * 1024),
        "FITSERVE_MAX_JSON_BODY_BYTES": str(64 * 1024 * 1024),
    },
    "now": {},
}


def json_dataset(size: int) -> bytes:
    """A JSON dataset of about `size` bytes: rows of 8 floats, 6 decimals, a numeric target each."""
    rng = np.random.default_rng(0)
    sample = np.round(rng.normal(size=(1000, 8)), 6)
    per_row = (
        len(json.dumps({"features": sample.tolist(), "targets": sample[:, 0].tolist()})) / 1000
    )
    rows = np.round(rng.normal(size=(int(size / per_row), 8)), 6)
    return json.dumps(
        {"name": "big", "features": rows.tolist(), "targets": rows[:, 0].tolist()}
    ).encode()


def keras_activation(size: int) -> bytes:
    layer = {"class_name": "Dense", "config": {"units": 3, "activation": "a" * size}}
    return json.dumps(
        {"config": {"class_name": "Sequential", "config": {"layers": [layer]}}}
    ).encode()


def job_body(size: int) -> bytes:
    return ('{"dataset": "iris", "pad": [' + ",".join(["0.5"] * (size // 4)) + "]}").encode()


def serve(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--port",
        str(port),
    ]
    argv += ["--log-level", "warning", "--no-access-log", "--ws", "none"]
    log = (tmp / f"uvicorn-{port}.log").open("wb")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"uvicorn did not start: {(tmp / f'uvicorn-{port}.log').read_text()[-2000:]}")


def probe_while(url: str, send: Callable[[httpx.Client], httpx.Response], rounds: int) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    durations: list[float] = []
    done = threading.Event()

    def sender() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for _ in range(rounds):
                start = time.perf_counter()
                statuses.append(send(http).status_code)
                durations.append(time.perf_counter() - start)
        done.set()

    with httpx.Client(base_url=url, timeout=600) as http:
        statuses.append(send(http).status_code)  # warm: imports, the helper process
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        while not done.is_set():
            start = time.perf_counter()
            http.get("/health")
            latencies.append(time.perf_counter() - start)
            time.sleep(0.005)
        thread.join()
    ordered = sorted(latencies)
    return {
        "statuses": sorted(set(statuses)),
        "probes": len(latencies),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[math.ceil(0.99 * len(ordered)) - 1],
        "max_ms": 1000 * ordered[-1],
        "request_s": [round(d, 2) for d in durations],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bodies = {
        "60 MB JSON dataset": ("/v1/datasets", json_dataset(60 * MB)),
        "30 MB import-keras": ("/v1/networks/import-keras", keras_activation(30 * MB)),
        "63 MB job body": ("/v1/jobs", job_body(63 * MB)),
    }
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for variant, overrides in VARIANTS.items():
            env = {**os.environ, **overrides}
            env["FITSERVE_DATABASE_URL"] = f"sqlite:///{tmp}/{len(overrides)}.db"
            upgrade_head(env["FITSERVE_DATABASE_URL"])
            env.pop("FITSERVE_REQUIRE_API_KEYS", None)
            process, url = serve(env, tmp)
            try:
                for kind, (path, body) in bodies.items():

                    def send(
                        h: httpx.Client, path: str = path, body: bytes = body
                    ) -> httpx.Response:
                        return h.post(
                            path, content=body, headers={"Content-Type": "application/json"}
                        )

                    figures = probe_while(url, send, args.rounds)
                    print(json.dumps({"variant": variant, "kind": kind, **figures}), flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
