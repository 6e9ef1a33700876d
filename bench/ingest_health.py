"""/health latency while the heaviest dataset uploads are in flight, over uvicorn (real HTTP).

One API process (uvicorn, SQLite, cell and body limits raised to take the files); for each file
(20 features x ROWS as CSV and as Parquet, generated as bench/ingest.py does), `--rounds` uploads
back to back while another client probes GET /health every ~5 ms; reported: the probes' p50, p99
and max per file, over all rounds. tests/security/test_event_loop.py asserts the 100 ms p99 at the
test limits' sizes; this measures it at bench/ingest.py's largest file.

    python bench/ingest_health.py [--rows 900000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import prepare  # noqa: E402


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=900_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitserve-health-") as name:
        tmp = Path(name)
        files = prepare(tmp, args.rows)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "FITSERVE_DATABASE_URL": f"sqlite:///{tmp}/api.db",
            "FITSERVE_MAX_DATASET_CELLS": str(100_000_000),
        }
        migrate = "import os; from app.db import upgrade_head; upgrade_head(os.environ['FITSERVE_DATABASE_URL'])"  # noqa: E501
        subprocess.run([sys.executable, "-c", migrate], env=env, cwd=ROOT, check=True)
        code = (
            "import uvicorn; from app.main import create_app; "
            f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')"
        )
        server = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            print(f"{args.rows:,} rows; 1-min load {os.getloadavg()[0]:.2f}")
            for kind, path in files.items():
                latencies: list[float] = []
                seconds: list[float] = []
                done = threading.Event()

                def upload(
                    path: Path = path,
                    seconds: list[float] = seconds,
                    done: threading.Event = done,
                ) -> None:
                    try:
                        with httpx.Client(base_url=base, timeout=600) as http:
                            for _ in range(args.rounds):
                                with path.open("rb") as f:
                                    t0 = time.perf_counter()
                                    form = {"target": "species", "name": "h"}
                                    files = {"file": (path.name, f)}
                                    r = http.post("/v1/datasets", files=files, data=form)
                                    seconds.append(time.perf_counter() - t0)
                                    assert r.status_code == 201, r.text[:300]
                    finally:
                        done.set()

                thread = threading.Thread(target=upload, daemon=True)
                with httpx.Client(base_url=base, timeout=60) as http:
                    thread.start()
                    while not done.is_set():
                        t0 = time.perf_counter()
                        assert http.get("/health").status_code == 200
                        latencies.append(time.perf_counter() - t0)
                        time.sleep(0.005)
                thread.join()
                print(f"| {kind} | {', '.join(f'{s:.1f}' for s in seconds)} | {len(latencies)} | "
                      f"{_p(latencies, 0.5) * 1000:.1f} | {_p(latencies, 0.99) * 1000:.1f} | "
                      f"{max(latencies) * 1000:.1f} |", flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
