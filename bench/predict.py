"""Prediction requests/s and p50/p99 latency: fitserve's HTTP endpoint against a bare FastAPI
endpoint holding the same model, and against `mlflow models serve` where it is installed.

- fitserve: `POST /v1/models/{id}/predict` of the real app (SQLite file, keyless loopback mode,
  the model row stored as the worker stores it), every layer on: limits middleware, owner
  check, the model cache, /metrics histogram.
- fitserve with an API key: the same for a model owned by a key, each request sending that key
  (`Authorization: Bearer`), as every request does where keys are required.
- fitserve <commit>: with --baseline DIR, another commit's checkout served the same way.
- bare:     bench/bare_predict_app.py — the fastest plain FastAPI endpoint around the same
  weights (async def, orjson in and out, a plain Response: no thread hop, no response_model
  pass), shape-checked like fitserve's.
- mlflow:   the same network exported to ONNX (models.onnx_export: standardization + network +
  softmax in one graph), saved with mlflow.onnx and served by `mlflow models serve
  --env-manager local` (onnxruntime inside; no pickle anywhere). Only with --mlflow PATH; give
  it twice to compare two installs (say, with and without uvloop and httptools in MLflow's venv,
  which `pip install mlflow` does not bring; fitserve depends on both).

Each server is its own process: `python -m uvicorn ... --workers 1 --log-level warning
--no-access-log` on 127.0.0.1 (MLflow starts its own uvicorn with -w 1). Two clients, each one
keep-alive connection sending a request when the last is answered (closed loop, concurrency 1),
so requests/s is 1 / the mean round trip, the client's own time included:

- wrk (`apt-get install wrk`), a C load generator: little of each round trip is the client's,
  so its figures compare the servers;
- one httpx.Client: what a Python caller sees (the body encoded once, as wrk sends it); its
  ~0.4 ms a request narrows every ratio.

Rounds are interleaved (every target once a round, in rotating order) because the machine may be
shared; each table row is the median round by requests/s, with that round's p50/p99 and the
server's own CPU time per request (its process tree's user + system time from /proc), which a
busy machine disturbs far less than the wall-clock figures.

    python bench/predict.py [--rounds 3] [--seconds 3] [--requests 500] [--clients wrk,httpx]
                            [--mlflow /tmp/mlflow-venv/bin/mlflow ...] [--baseline /tmp/base ...]
                            [--sizes 1,100,10000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


CLIENTS = {
    "wrk": "wrk 4 (C, one thread, one keep-alive connection): the server's cost, little of "
    "the client's",
    "httpx": "one httpx.Client (Python, keep-alive), requests one after another: a Python "
    "caller's view, ~0.4 ms a request of it the client's own",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iris() -> tuple[np.ndarray, np.ndarray]:
    from app.csv_ingest import parse_csv
    from app.data import BUILTINS

    builtin = BUILTINS["iris"]
    data = parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)
    return np.asarray(data.x, dtype=np.float32), np.asarray(data.y)


def store_model(database_url: str, weights: bytes, final: dict[str, Any],
                owner: str | None = None) -> str:  # fmt: skip
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
        job = Job(owner_id=owner, dataset_id=dataset.id, network=NETWORK, training=TRAINING,
                  status="succeeded",
                  epochs=TRAINING["epochs"], epoch=TRAINING["epochs"],
                  finished_at=datetime.now(UTC))  # fmt: skip
        session.add(job)
        session.flush()
        model = Model(owner_id=owner, job_id=job.id, dataset_id=dataset.id, network=NETWORK,
                      training=TRAINING,
                      task="classification", classes=dataset.classes, metrics=final,
                      weights=weights)  # fmt: skip
        session.add(model)
        session.flush()
        job.model_id = model.id
        model_id = model.id
    engine.dispose()
    return str(model_id)


def create_key(database_url: str) -> tuple[str, str]:
    """(key id, secret) of a new API key, as `fitserve keys create` makes one."""
    from app.auth import create_key as make
    from app.db import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    with make_sessionmaker(engine).begin() as session:
        key, secret = make(session, name="bench")
        key_id = key.id
    engine.dispose()
    return key_id, secret


def uvicorn(target: str, port: int, env: dict[str, str], factory: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return [*cmd, "--factory"] if factory else cmd


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], url: str,
                 body: Any, headers: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:  # fmt: skip
        self.name, self.url, self.body, self.headers = name, url, body, headers or {}
        # `python -m uvicorn` imports `app` from its working directory first
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=cwd)

    def wait_ready(self, client: httpx.Client, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                r = client.post(self.url, json=self.body(1), headers=self.headers)
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


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # the server's CPU time per request


def measure_httpx(client: httpx.Client, server: Server, n_rows: int, requests: int) -> Round:
    """`requests` sequential requests from one keep-alive httpx.Client. The body is encoded once,
    as wrk sends it: encoding 10,000 rows (`json=`) took the client 17-22 ms of CPU a request,
    the caller's cost, not the server's."""
    body = json.dumps(server.body(n_rows)).encode()
    headers = {"Content-Type": "application/json", **server.headers}
    for _ in range(20):  # warm the connection and the server's caches
        client.post(server.url, content=body, headers=headers)
    cpu0 = cpu_seconds(server.proc.pid)
    latencies = []
    for _ in range(requests):
        t0 = time.perf_counter()
        r = client.post(server.url, content=body, headers=headers)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"{server.name}: {r.status_code} {r.text[:300]}")
    cpu = (cpu_seconds(server.proc.pid) - cpu0) / requests
    ms = np.array(latencies) * 1e3
    return Round(requests / sum(latencies), float(np.percentile(ms, 50)),
                 float(np.percentile(ms, 99)), cpu * 1e3)  # fmt: skip


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def measure_wrk(server: Server, n_rows: int, seconds: float, tmp: Path) -> Round:
    """`wrk -t1 -c1` for `seconds`: one connection, each request sent when the last is answered."""
    script = tmp / f"wrk-{n_rows}.lua"
    body = json.dumps(server.body(n_rows))
    headers = {"Content-Type": "application/json", **server.headers}
    script.write_text('wrk.method = "POST"\n'
                      + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
                      + f"wrk.body = [==[{body}]==]\n")  # fmt: skip
    run = ["wrk", "-t1", "-c1", "--latency", "-s", str(script), server.url]
    subprocess.run([*run[:-1], "-d1s", server.url], check=True, capture_output=True)  # warm-up
    cpu0 = cpu_seconds(server.proc.pid)
    done = subprocess.run([*run[:-1], f"-d{seconds:g}s", server.url], check=True,
                          capture_output=True, text=True)  # fmt: skip
    cpu = cpu_seconds(server.proc.pid) - cpu0
    out = done.stdout
    if "Non-2xx" in out or done.stderr:  # a script error goes to stderr; wrk then sends GETs
        raise RuntimeError(f"{server.name}: wrk saw errors\n{out}\n{done.stderr}")
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]

    def percentile(p: int) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * _WRK_UNITS[unit]

    return Round(rps, percentile(50), percentile(99), cpu / total * 1e3)


def commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def _dirty() -> bool:
    done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "app", "bench"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return bool(done.stdout.strip())


def mlflow_server(mlflow: Path, weights: bytes, tmp: Path, x: np.ndarray) -> Server:
    from models.onnx_export import to_onnx

    python = mlflow.parent / "python"
    fast_http = subprocess.run([str(python), "-c", "import uvloop, httptools"],
                               capture_output=True).returncode == 0  # fmt: skip
    name = "mlflow + uvloop/httptools" if fast_http else "mlflow"
    tmp = tmp / name.replace(" ", "").replace("/", "-").replace("+", "-")
    tmp.mkdir()
    onnx_path, model_dir = tmp / "model.onnx", tmp / "mlflow-model"
    onnx_path.write_bytes(to_onnx(weights))
    save = ("import onnx, mlflow.onnx, sys; "
            "mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])")  # fmt: skip
    subprocess.run([str(python), "-c", save, str(onnx_path), str(model_dir)], check=True)
    port = free_port()
    cmd = [str(mlflow), "models", "serve", "-m", str(model_dir), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    # mlflow starts `uvicorn` by name: its own venv must come first on PATH. Its uvicorn logs
    # every request by default; off, as for the other servers (uvicorn reads UVICORN_* options).
    env = {"PATH": f"{mlflow.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "UVICORN_ACCESS_LOG": "false"}  # fmt: skip
    return Server(name, cmd, env, f"http://127.0.0.1:{port}/invocations",
                  lambda n: {"inputs": rows(n, x)})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="wrk's run per target and round")
    parser.add_argument("--clients", type=lambda v: v.split(","), default=list(CLIENTS),
                        help="comma-separated: wrk (skipped if not installed), httpx")  # fmt: skip
    parser.add_argument("--mlflow", type=Path, action="append", default=[],
                        help="an mlflow executable (repeatable)")  # fmt: skip
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another commit's checkout, run side by side")  # fmt: skip
    parser.add_argument("--sizes", type=lambda v: tuple(int(n) for n in v.split(",")),
                        default=(1, 100),
                        help="rows per request, comma-separated (10000: FITSERVE_MAX_PREDICT_ROWS' "
                        "default, the largest JSON prediction a default server takes)")  # fmt: skip
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

    key_id, secret = create_key(database_url)
    keyed_model = store_model(database_url, weights, result.history[-1].as_dict(), owner=key_id)
    servers = []
    for name, cwd in [("fitserve", ROOT), *((f"fitserve {commit(b)}", b) for b in args.baseline)]:
        p1, p2 = free_port(), free_port()
        servers += [
            Server(name, uvicorn("app.main:create_app", p1, {}, factory=True),
                   {"FITSERVE_DATABASE_URL": database_url},
                   f"http://127.0.0.1:{p1}/v1/models/{model_id}/predict", body, cwd=cwd),
            Server(f"{name} with an API key", uvicorn("app.main:create_app", p2, {}, factory=True),
                   {"FITSERVE_DATABASE_URL": database_url},
                   f"http://127.0.0.1:{p2}/v1/models/{keyed_model}/predict", body,
                   {"Authorization": f"Bearer {secret}"}, cwd=cwd),
        ]  # fmt: skip
    p3 = free_port()
    servers.append(
        Server("bare FastAPI", uvicorn("bench.bare_predict_app:app", p3, {}),
               {"BENCH_WEIGHTS": str(tmp / "weights.safetensors"),
                "BENCH_CLASSES": ",".join(CLASSES), "BENCH_FEATURES": str(x.shape[1])},
               f"http://127.0.0.1:{p3}/predict", body)
    )  # fmt: skip
    mlflow_note = "" if args.mlflow else "not measured: no --mlflow given"
    for mlflow in args.mlflow:
        try:
            servers.append(mlflow_server(mlflow, weights, tmp, x))
        except (OSError, subprocess.CalledProcessError) as exc:
            mlflow_note += f"{mlflow} not measured: {exc}. "
    sizes = args.sizes
    clients = [c for c in args.clients if c != "wrk" or shutil.which("wrk")]
    results: dict[tuple[str, str, int], list[Round]] = {}
    try:
        with httpx.Client(timeout=60) as client:
            for s in list(servers):
                try:
                    s.wait_ready(client)
                except RuntimeError as exc:
                    if not s.name.startswith("mlflow"):
                        raise
                    mlflow_note += f"{s.name} not measured: {exc}. "
                    s.stop()
                    servers.remove(s)
            for r in range(args.rounds):
                order = servers[r % len(servers) :] + servers[: r % len(servers)]
                for c, s, n in itertools.product(clients, order, sizes):
                    if c == "wrk":
                        got = measure_wrk(s, n, args.seconds, tmp)
                    else:  # big requests take ~100x longer each: fewer of them
                        got = measure_httpx(
                            client, s, n, max(30, args.requests * 100 // max(n, 100))
                        )
                    results.setdefault((c, s.name, n), []).append(got)
                    print(f"  round {r + 1} {c:5s} {s.name:26s} {n:3d} rows: "
                          f"{got.rps:7.0f} req/s", flush=True)  # fmt: skip
    finally:
        for s in servers:
            s.stop()
    print(report([s.name for s in servers], sizes, clients, results, args, mlflow_note))


def report(names: list[str], sizes: tuple[int, ...], clients: list[str],
           results: dict[tuple[str, str, int], list[Round]], args: argparse.Namespace,
           mlflow_note: str) -> str:  # fmt: skip
    def median(c: str, name: str, n: int) -> Round:
        """The median round by requests/s."""
        rounds = sorted(results[(c, name, n)], key=lambda r: r.rps)
        return rounds[len(rounds) // 2]

    def ratio(c: str, n: int, other: str) -> str:
        """fitserve's median over the other's, and the range of the same ratio taken round by
        round (the rounds are interleaved, so each pair ran under the same load)."""
        pairs = zip(results[(c, "fitserve", n)], results[(c, other, n)], strict=True)
        per_round = sorted(f.rps / o.rps for f, o in pairs)
        mid = median(c, "fitserve", n).rps / median(c, other, n).rps
        return f"{mid:.2f}x {other} ({per_round[0]:.2f}–{per_round[-1]:.2f} by round)"

    lines = [
        f"Commit {commit(ROOT)}"
        + (" (uncommitted changes)" if _dirty() else "")
        + f" against {', '.join(commit(b) for b in args.baseline) or 'no baseline'}. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{args.rounds} rounds per client, server and size (wrk: {args.seconds:g} s each, httpx: "
        f"{args.requests} requests each), concurrency 1; load average at the end "
        f"{os.getloadavg()[0]:.1f}",
    ]
    for c in clients:
        lines += [
            "",
            f"Client: {CLIENTS[c]}",
            "",
            "| server | rows/request | requests/s (range over rounds) | p50 ms | p99 ms "
            "| server CPU ms/request |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, n in itertools.product(names, sizes):
            m = median(c, name, n)
            spread = sorted(r.rps for r in results[(c, name, n)])
            lines.append(f"| {name} | {n} | {m.rps:.0f} ({spread[0]:.0f}–{spread[-1]:.0f}) | "
                         f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.cpu_ms:.2f} |")  # fmt: skip
        lines.append("")
        for n in sizes:
            fit = median(c, "fitserve", n)
            others = [o for o in names if o != "fitserve"]
            rate = ", ".join(ratio(c, n, o) for o in others)
            used = ", ".join(f"{median(c, o, n).cpu_ms / fit.cpu_ms:.2f}x" for o in others)
            lines.append(f"{n}-row requests/s, fitserve over: {rate} (their server CPU per "
                         f"request over fitserve's: {used})")  # fmt: skip
            keyed = median(c, "fitserve with an API key", n)
            lines.append(f"{n}-row requests/s with an API key over without: "
                         f"{keyed.rps / fit.rps:.2f}x")  # fmt: skip
    if mlflow_note:
        lines.append(f"MLflow: {mlflow_note}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
