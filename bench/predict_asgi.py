"""Server CPU per JSON prediction, in process: the app called as an ASGI callable, no sockets.

What a request costs the server itself, without the HTTP parser, the kernel or the client, and
far less disturbed by a busy machine than a wall-clock figure. Each target runs in a process of
its own (its checkout's code imported there) and answers rounds on command, so the rounds are
interleaved: every target once a round, in rotating order.

- fitserve: `POST /v1/models/{id}/predict` of `create_app()` (SQLite file, keyless loopback,
  the model cached after the first request), every middleware on;
- fitserve <commit>: with --baseline DIR, another commit's checkout, the same way;
- bare FastAPI: bench/bare_predict_app.py (orjson in and out, no limits, no auth).

The body arrives in 64 KiB chunks, as uvicorn hands a large one on. Each round is `--requests`
requests; the figure is CPU time (`time.process_time`, every thread of the process) per
request, the median round and the range. `--profile` prints each target's cProfile (top
functions by own time) over one more round; `--steps` counts each one's Python bytecode
instructions per request (deterministic: the machine's load does not move it).

    python bench/predict_asgi.py [--rows 10000] [--requests 100] [--rounds 5]
                                 [--baseline /tmp/base ...] [--profile] [--steps]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024

Asgi = Callable[..., Awaitable[None]]


def _chunks(body: bytes) -> list[dict[str, Any]]:
    parts = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    last = len(parts) - 1
    return [
        {"type": "http.request", "body": part, "more_body": i < last}
        for i, part in enumerate(parts)
    ]


async def _call(app: Asgi, path: str, body: bytes) -> tuple[int, bytes]:
    messages = _chunks(body)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status, out = 0, []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a client that keeps its connection open
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(out)


def _child(kind: str, workdir: Path, n_rows: int) -> None:
    """Serve rounds on stdin commands ("round N" or "profile N"), one JSON line back each."""
    import numpy as np

    sys.path.insert(0, str(Path.cwd()))
    from bench.predict import CLASSES, rows

    x = np.load(workdir / "x.npy")
    body = json.dumps({"inputs": rows(n_rows, x)}).encode()
    lifespan: Any = None
    if kind == "bare":
        os.environ["BENCH_WEIGHTS"] = str(workdir / "weights.safetensors")
        os.environ["BENCH_CLASSES"] = ",".join(CLASSES)
        os.environ["BENCH_FEATURES"] = str(x.shape[1])
        from bench.bare_predict_app import app

        path = "/predict"
    else:
        from app.config import Settings
        from app.main import create_app

        app = create_app(Settings(database_url=f"sqlite:///{workdir / 'bench.db'}"))
        path = f"/v1/models/{(workdir / 'model_id').read_text()}/predict"
        lifespan = app.router.lifespan_context(app)

    async def serve() -> None:
        if lifespan is not None:
            await lifespan.__aenter__()
        status, answer = await _call(app, path, body)
        if status != 200:
            raise SystemExit(f"{kind}: {status} {answer[:300]!r}")
        for _ in range(3):  # warm caches and the thread pool
            await _call(app, path, body)
        print(json.dumps({"ready": len(body)}), flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, count = line.split()
            if command == "steps":
                print(json.dumps({"steps": await _steps(app, path, body, int(count))}), flush=True)
                continue
            profiler = cProfile.Profile() if command == "profile" else None
            if profiler is not None:
                profiler.enable()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(int(count)):
                await _call(app, path, body)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            report: dict[str, Any] = {"cpu_ms": cpu / int(count) * 1e3,
                                      "wall_ms": wall / int(count) * 1e3}  # fmt: skip
            if profiler is not None:
                profiler.disable()
                text = io.StringIO()
                stats = pstats.Stats(profiler, stream=text)
                stats.sort_stats("tottime").print_stats(22)
                report["profile"] = text.getvalue()
            print(json.dumps(report), flush=True)
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)

    asyncio.run(serve())


async def _steps(app: Asgi, path: str, body: bytes, count: int) -> float:
    """Python bytecode instructions run per request (sys.settrace's opcode events): the Python
    work a request costs, the same on a busy machine as on a quiet one. Work in C (torch, numpy,
    orjson, regexes) counts only as the instruction that calls it."""
    steps = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if event == "call":
            frame.f_trace_opcodes, frame.f_trace_lines = True, False
        elif event == "opcode":
            steps += 1
        return trace

    sys.settrace(trace)
    try:
        for _ in range(count):
            await _call(app, path, body)
    finally:
        sys.settrace(None)
    return steps / count


def _prepare(workdir: Path) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import models
    from bench.predict import NETWORK, TRAINING, iris, store_model

    x, y = iris()
    result = models.fit(NETWORK, TRAINING, x, y, device="cpu")
    weights = models.save_model(result, NETWORK)
    np.save(workdir / "x.npy", x)
    (workdir / "weights.safetensors").write_bytes(weights)
    url = f"sqlite:///{workdir / 'bench.db'}"
    (workdir / "model_id").write_text(store_model(url, weights, result.history[-1].as_dict()))


def _commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per request")
    parser.add_argument("--requests", type=int, default=100, help="requests per target and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, action="append", default=[],
                        help="another commit's checkout, run side by side")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each")
    parser.add_argument("--steps", action="store_true",
                        help="count each one's Python bytecodes per request too")  # fmt: skip
    parser.add_argument("--child", nargs=2, metavar=("KIND", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), args.rows)
        return

    workdir = Path(tempfile.mkdtemp(prefix="fitserve-asgi-bench-"))
    _prepare(workdir)
    targets = [("fitserve", "app", ROOT)]
    targets += [(f"fitserve {_commit(b)}", "app", b) for b in args.baseline]
    targets.append(("bare FastAPI", "bare", ROOT))
    children = {}
    for name, kind, cwd in targets:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rows", str(args.rows),
               "--child", kind, str(workdir)]  # fmt: skip
        children[name] = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    body_bytes = 0
    for name, child in children.items():
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit(f"{name} did not start")
        body_bytes = json.loads(line)["ready"]

    def ask(name: str, command: str) -> dict[str, Any]:
        child = children[name]
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(f"{command} {args.requests}\n")
        child.stdin.flush()
        return dict(json.loads(child.stdout.readline()))

    names = list(children)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    try:
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                cpu[name].append(ask(name, "round")["cpu_ms"])
                print(f"  round {r + 1} {name:24s} {cpu[name][-1]:7.2f} ms CPU/request",
                      flush=True)  # fmt: skip
        profiles = {name: ask(name, "profile")["profile"] for name in names} if args.profile else {}
        steps = {name: ask(name, "steps")["steps"] for name in names} if args.steps else {}
    finally:
        for child in children.values():
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)
    for name, text in profiles.items():
        print(f"\n## {name}: cProfile over {args.requests} requests\n{text}")
    print(f"\n{args.rows:,}-row requests ({body_bytes:,} bytes), {args.requests} a round, "
          f"{args.rounds} rounds; load average at the end {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| server | CPU ms/request, median round (range) |"
          + (" Python steps/request |\n|---|---:|---:|" if steps else "\n|---|---:|"))  # fmt: skip
    for name in names:
        values = sorted(cpu[name])
        print(f"| {name} | {statistics.median(values):.2f} ({values[0]:.2f}–{values[-1]:.2f}) |"
              + (f" {steps[name]:,.0f} |" if steps else ""))  # fmt: skip


if __name__ == "__main__":
    main()
