"""Prediction requests/s and p50/p99 latency: fitserve's HTTP endpoint against a bare FastAPI
endpoint holding the same model, and against `mlflow models serve` where it is installed.

- fitserve: `POST /v1/models/{id}/predict` of the real app (SQLite file, keyless loopback mode,
  the model row stored as the worker stores it), every layer on: limits middleware, session,
  owner check, LRU of Predictors, /metrics histogram.
- bare:     bench/bare_predict_app.py — a hand-written FastAPI endpoint around the same weights.
- mlflow:   the same network exported to ONNX (models.onnx_export: standardization + network +
  softmax in one graph), saved with mlflow.onnx and served by `mlflow models serve
  --env-manager local` (onnxruntime inside; no pickle anywhere). Only with --mlflow PATH.

Each server is its own process: `python -m uvicorn ... --workers 1 --log-level warning
--no-access-log` on 127.0.0.1 (MLflow starts its own uvicorn with -w 1). The client is one
httpx.Client with keep-alive sending requests one after another (closed loop, concurrency 1), so
requests/s is 1 / mean latency of a full round trip. Rounds are interleaved (every target once a
round, in rotating order) because the machine may be shared; the table shows the median round's
requests/s and p50/p99 over all rounds' requests, and the server's own CPU time per request (its
process tree's user + system time from /proc), which a busy machine disturbs far less than the
wall-clock figures.

    python bench/predict.py [--requests 500] [--rounds 3] [--mlflow /tmp/mlflow-venv/bin/mlflow]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402

NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
TRAINING = {"loss": "sparse_categorical_crossentropy", "optimizer": "adam", "batch_size": 10,
            "epochs": 30, "seed": 0, "standardize": True}  # fmt: skip
CLASSES = ["setosa", "versicolor", "virginica"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iris() -> tuple[np.ndarray, np.ndarray]:
    from app.data import BUILTINS
    from app.datasets import parse_csv

    builtin = BUILTINS["iris"]
    data = parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)
    return np.asarray(data.x, dtype=np.float32), np.asarray(data.y)


def store_model(database_url: str, weights: bytes, final: dict[str, Any]) -> str:
    """The Job and Model rows as the worker leaves them after a succeeded job."""
    from sqlalchemy import select

    from app.db import make_engine, make_sessionmaker, upgrade_head
    from app.services.datasets import register_builtins
    from app.tables import Dataset, Job, Model

    upgrade_head(database_url)
    engine = make_engine(database_url)
    with make_sessionmaker(engine).begin() as session:
        register_builtins(session)
    with make_sessionmaker(engine).begin() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "iris", Dataset.builtin))
        assert dataset is not None
        job = Job(dataset_id=dataset.id, network=NETWORK, training=TRAINING, status="succeeded",
                  epochs=TRAINING["epochs"], epoch=TRAINING["epochs"],
                  finished_at=datetime.now(UTC))  # fmt: skip
        session.add(job)
        session.flush()
        model = Model(job_id=job.id, dataset_id=dataset.id, network=NETWORK, training=TRAINING,
                      task="classification", classes=dataset.classes, metrics=final,
                      weights=weights)  # fmt: skip
        session.add(model)
        session.flush()
        job.model_id = model.id
        model_id = model.id
    engine.dispose()
    return str(model_id)


def uvicorn(target: str, port: int, env: dict[str, str], factory: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return [*cmd, "--factory"] if factory else cmd


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], url: str,
                 body: Any) -> None:  # fmt: skip
        self.name, self.url, self.body = name, url, body
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=ROOT)

    def wait_ready(self, client: httpx.Client, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                r = client.post(self.url, json=self.body(1))
                if r.status_code == 200:
                    return
                raise RuntimeError(f"{self.name}: {r.status_code} {r.text[:300]}")
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


def rows(n: int, x: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in x[i % len(x)]] for i in range(n)]


def measure(
    client: httpx.Client, server: Server, n_rows: int, requests: int
) -> tuple[list[float], float]:
    """Latencies of `requests` sequential requests, and the server's CPU seconds per request."""
    body = server.body(n_rows)
    for _ in range(20):  # warm the connection and the server's caches
        client.post(server.url, json=body)
    cpu0 = cpu_seconds(server.proc.pid)
    latencies = []
    for _ in range(requests):
        t0 = time.perf_counter()
        r = client.post(server.url, json=body)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"{server.name}: {r.status_code} {r.text[:300]}")
    return latencies, (cpu_seconds(server.proc.pid) - cpu0) / requests


def mlflow_server(mlflow: Path, weights: bytes, tmp: Path, x: np.ndarray) -> Server:
    from models.onnx_export import to_onnx

    onnx_path, model_dir = tmp / "model.onnx", tmp / "mlflow-model"
    onnx_path.write_bytes(to_onnx(weights))
    python = mlflow.parent / "python"
    save = ("import onnx, mlflow.onnx, sys; "
            "mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])")  # fmt: skip
    subprocess.run([str(python), "-c", save, str(onnx_path), str(model_dir)], check=True)
    port = free_port()
    cmd = [str(mlflow), "models", "serve", "-m", str(model_dir), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    # mlflow starts `uvicorn` by name: its own venv must come first on PATH
    path = {"PATH": f"{mlflow.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return Server("mlflow", cmd, path, f"http://127.0.0.1:{port}/invocations",
                  lambda n: {"inputs": rows(n, x)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mlflow", type=Path, default=None, help="the mlflow executable")
    args = parser.parse_args()

    x, y = iris()
    result = models.fit(NETWORK, TRAINING, x, y, device="cpu")
    weights = models.save_model(result, NETWORK)
    tmp = Path(tempfile.mkdtemp(prefix="fitserve-bench-"))
    database_url = f"sqlite:///{tmp / 'bench.db'}"
    model_id = store_model(database_url, weights, result.history[-1].as_dict())
    (tmp / "weights.safetensors").write_bytes(weights)

    def body(n: int) -> dict[str, Any]:
        return {"inputs": rows(n, x)}

    p1, p2 = free_port(), free_port()
    servers = [
        Server("fitserve", uvicorn("app.main:create_app", p1, {}, factory=True),
               {"FITSERVE_DATABASE_URL": database_url},
               f"http://127.0.0.1:{p1}/v1/models/{model_id}/predict", body),
        Server("bare FastAPI", uvicorn("bench.bare_predict_app:app", p2, {}),
               {"BENCH_WEIGHTS": str(tmp / "weights.safetensors"),
                "BENCH_CLASSES": ",".join(CLASSES)},
               f"http://127.0.0.1:{p2}/predict", body),
    ]  # fmt: skip
    mlflow_note = "not measured: no --mlflow given"
    if args.mlflow is not None:
        try:
            servers.append(mlflow_server(args.mlflow, weights, tmp, x))
            mlflow_note = ""
        except (OSError, subprocess.CalledProcessError) as exc:
            mlflow_note = f"not measured: {exc}"
    sizes = (1, 100)
    lat: dict[tuple[str, int], list[float]] = {}
    rps: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    try:
        with httpx.Client(timeout=60) as client:
            for s in list(servers):
                try:
                    s.wait_ready(client)
                except RuntimeError as exc:
                    if s.name != "mlflow":
                        raise
                    mlflow_note = f"not measured: {exc}"
                    s.stop()
                    servers.remove(s)
            for r in range(args.rounds):
                order = servers[r % len(servers) :] + servers[: r % len(servers)]
                for s in order:
                    for n in sizes:
                        got, cpu_per_request = measure(client, s, n, args.requests)
                        cpu.setdefault((s.name, n), []).append(cpu_per_request)
                        lat.setdefault((s.name, n), []).extend(got)
                        rps.setdefault((s.name, n), []).append(len(got) / sum(got))
                        print(f"  round {r + 1} {s.name:12s} {n:3d} rows: "
                              f"{rps[(s.name, n)][-1]:7.0f} req/s", flush=True)  # fmt: skip
    finally:
        for s in servers:
            s.stop()
    print(report(servers, sizes, lat, rps, cpu, args, mlflow_note))


def report(servers: list[Server], sizes: tuple[int, ...], lat: dict[tuple[str, int], list[float]],
           rps: dict[tuple[str, int], list[float]], cpu: dict[tuple[str, int], list[float]],
           args: argparse.Namespace, mlflow_note: str) -> str:  # fmt: skip
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{args.rounds} rounds x {args.requests} requests per target and size, concurrency 1; "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        "",
        "| server | rows/request | requests/s (median round) | p50 ms | p99 ms "
        "| server CPU ms/request (median round) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in servers:
        for n in sizes:
            ls = np.array(lat[(s.name, n)]) * 1e3
            lines.append(f"| {s.name} | {n} | {statistics.median(rps[(s.name, n)]):.0f} | "
                         f"{np.percentile(ls, 50):.2f} | {np.percentile(ls, 99):.2f} | "
                         f"{statistics.median(cpu[(s.name, n)]) * 1e3:.2f} |")  # fmt: skip
    names = [s.name for s in servers]
    lines.append("")
    for n in sizes:
        fit = statistics.median(rps[("fitserve", n)])
        bare = statistics.median(rps[("bare FastAPI", n)])
        line = f"{n}-row requests/s: fitserve / bare FastAPI = {fit / bare:.2f}x"
        if "mlflow" in names:
            line += f"; fitserve / mlflow = {fit / statistics.median(rps[('mlflow', n)]):.2f}x"
        cpu_fit = statistics.median(cpu[("fitserve", n)])
        line += (f" (server CPU per request: bare / fitserve = "
                 f"{statistics.median(cpu[('bare FastAPI', n)]) / cpu_fit:.2f}x")  # fmt: skip
        if "mlflow" in names:
            line += f", mlflow / fitserve = {statistics.median(cpu[('mlflow', n)]) / cpu_fit:.2f}x"
        line += ")"
        lines.append(line)
    if mlflow_note:
        lines.append(f"MLflow: {mlflow_note}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
