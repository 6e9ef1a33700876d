"""A 100 M-cell dataset from upload through training to predict.csv, timed, with each process's
peak memory: the check behind README's "datasets of 100 M cells work on a 24 GB machine".

Data (generated, seed 0): 5,000,000 rows x 19 float features (4 decimals) and a 3-class text label
= 100,000,000 cells, as one CSV (~0.8 GB). Services: the API (uvicorn) and one `fitserve worker`,
SQLite, FITSERVE_MAX_DATASET_CELLS=100000000 (the upload cap follows: 3.2 GB). Steps:

1. upload the CSV (multipart, streamed from disk): seconds, the API's VmHWM;
2. train 19 -> 32 -> 3 (relu, softmax; adam, batch 1024) for 1 epoch: seconds from submit to
   `succeeded`, the worker's and its training process's VmHWM (sampled every 0.2 s);
3. predict.csv on 10,000 rows of the same data (FITSERVE_MAX_PREDICT_ROWS): seconds.

    python bench/hundred_million_cells.py [--rows 5000000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 19


def write_csv(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(FEATURES)] + ["label"]
    with pa_csv.CSVWriter(path, pa.schema([(n, pa.float64()) for n in names[:-1]]
                          + [("label", pa.string())])) as writer:  # fmt: skip
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            x = rng.normal(size=(n, FEATURES)).round(4)
            label = np.where(x[:, 0] + x[:, 1] > 0.5, "high", np.where(x[:, 2] > 0, "mid", "low"))
            writer.write_table(pa.table({**{names[i]: x[:, i] for i in range(FEATURES)},
                                         "label": label}))  # fmt: skip


def _vm(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


class PeakWatch:
    """Samples VmHWM of a process and its children (a training process per attempt)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in [self.pid, *_children(self.pid)]:
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), _vm(pid, "VmHWM"))
            time.sleep(0.2)

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitserve-100m-") as name:
        tmp = Path(name)
        csv_path = tmp / "big.csv"
        t0 = time.perf_counter()
        write_csv(csv_path, args.rows)
        print(f"wrote {csv_path.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f} s")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "FITSERVE_DATABASE_URL": f"sqlite:///{tmp}/fitserve.db",
            "FITSERVE_MAX_DATASET_CELLS": str(100_000_000),
        }
        bin_dir = Path(sys.executable).parent
        subprocess.run([bin_dir / "fitserve", "migrate"], env=env, cwd=ROOT, check=True)
        code = (
            "import uvicorn; from app.main import create_app; "
            f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')"
        )
        api = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
        worker = subprocess.Popen([bin_dir / "fitserve", "worker"], env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        report: dict[str, Any] = {"rows": args.rows, "cells": args.rows * (FEATURES + 1)}
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            report["api_idle_mb"] = _vm(api.pid, "VmRSS")
            with csv_path.open("rb") as f, httpx.Client(base_url=base, timeout=3600) as http:
                t0 = time.perf_counter()
                r = http.post("/v1/datasets", files={"file": ("big.csv", f, "text/csv")},
                              data={"target": "label", "name": "100m"})  # fmt: skip
                report["upload_s"] = time.perf_counter() - t0
                assert r.status_code == 201, r.text[:500]
                dataset = r.json()
                report["api_upload_peak_mb"] = _vm(api.pid, "VmHWM")
                print("uploaded", {k: dataset[k] for k in ("rows", "n_features", "classes")})
                job = {
                    "dataset": dataset["id"],
                    "network": {"layers": [
                        {"type": "dense", "units": 32, "activation": "relu",
                         "input_dim": FEATURES},
                        {"type": "dense", "units": 3, "activation": "softmax"},
                    ]},
                    "training": {"loss": "sparse_categorical_crossentropy", "optimizer": "adam",
                                 "batch_size": 1024, "epochs": 1},
                }  # fmt: skip
                watch = PeakWatch(worker.pid)
                t0 = time.perf_counter()
                r = http.post("/v1/jobs", json=job)
                assert r.status_code == 202, r.text[:500]
                job_id = r.json()["id"]
                while True:
                    state = http.get(f"/v1/jobs/{job_id}").json()
                    if state["status"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.5)
                report["train_s"] = time.perf_counter() - t0
                peaks = watch.stop()
                assert state["status"] == "succeeded", state
                report["worker_peak_mb"] = peaks.pop(worker.pid, 0.0)
                report["training_process_peak_mb"] = max(peaks.values(), default=0.0)
                metrics = http.get(f"/v1/jobs/{job_id}/metrics").json()
                report["epoch"] = metrics.get("items", metrics)
                with csv_path.open("rb") as f:
                    lines = [next(f) for _ in range(10_001)]
                header = lines[0].decode().rsplit(",", 1)[0] + "\n"
                body = header.encode() + b"".join(line.rsplit(b",", 1)[0] + b"\n"
                                                  for line in lines[1:])  # fmt: skip
                t0 = time.perf_counter()
                r = http.post(f"/v1/models/{state['model_id']}/predict.csv", content=body,
                              headers={"content-type": "text/csv"})  # fmt: skip
                report["predict_csv_s"] = time.perf_counter() - t0
                assert r.status_code == 200, r.text[:500]
                report["predict_csv_lines"] = len(r.text.strip().splitlines())
                report["api_peak_mb"] = _vm(api.pid, "VmHWM")
        finally:
            for process in (worker, api):
                process.terminate()
                process.wait(60)
        for key, value in report.items():
            print(f"{key}: {value:,.1f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
