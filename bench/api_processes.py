"""1-row predictions with 1 and 2 API processes (`fitserve serve --api-processes N`) at 1, 16 and
64 concurrent clients: requests/s, latency and the server's CPU time per request.

Each server is `fitserve serve --workers 0` as a user starts it (keyless loopback mode, access log
on, as `make run` serves), both on one SQLite file holding one iris model, both started once and
kept up. The load is wrk with one thread and -c keep-alive connections, each sending its next
request when the last is answered; it runs on the same CPUs as the servers and takes its share.
Rounds are interleaved (every server and client count once a round, in rotating order) because
the machine may be shared; a row is the median round by requests/s, with the range over rounds.

Server CPU per request is the user + system time of `serve`'s process tree (the supervisor and
its API processes, from /proc) during the run, over the requests wrk counted; the split says how
that time divided between the API processes (how evenly the kernel handed out the connections:
each wrk connection stays with the process that accepted it).

    python bench/api_processes.py [--rounds 5] [--seconds 5] [--processes 1,2] [--clients 1,16,64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from bench.predict import (  # noqa: E402
    NETWORK,
    TRAINING,
    _dirty,
    commit,
    cpu_seconds,
    free_port,
    iris,
    rows,
    store_model,
)

FITSERVE = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class Server:
    processes: int
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def api_pids(self) -> list[int]:
        return [
            int(p) for p in re.findall(r"started api(?: \d+)? \(pid (\d+)\)", self.log.read_text())
        ]

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every API process has finished its startup (not only the first to answer)."""
        deadline = time.monotonic() + timeout
        while self.log.read_text().count("Application startup complete") < self.processes:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve with {self.processes}: not up\n{self.log.read_text()}")
            time.sleep(0.3)

    def rss_mb(self) -> list[float]:
        """Resident memory of each API process (its own pages, torch and the model cache in)."""
        sizes = []
        for pid in self.api_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            sizes.append(int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024)  # type: ignore[index]
        return sizes

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(processes: int, database_url: str, tmp: Path) -> Server:
    port = free_port()
    log = tmp / f"serve-{processes}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    cmd = [*FITSERVE, "serve", "--api-processes", str(processes), "--workers", "0",
           "--port", str(port), "--database-url", database_url]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Server(processes, port, proc, log)


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # the server's CPU time per request
    split: list[float]  # each API process' share of the API processes' CPU time
    load: float  # 1-minute load average when the run started
    timeouts: int  # requests wrk gave up on after 2 s


def tree_cpu(pids: list[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


def measure(server: Server, clients: int, seconds: float, script: Path, url: str) -> Round:
    run = ["wrk", "-t1", f"-c{clients}", "--latency", "-s", str(script)]
    subprocess.run([*run, "-d1s", url], check=True, capture_output=True)  # warm-up
    load = os.getloadavg()[0]
    pids = server.api_pids()
    cpu0, api0 = cpu_seconds(server.proc.pid), tree_cpu(pids)
    done = subprocess.run([*run, f"-d{seconds:g}s", url], check=True, capture_output=True,
                          text=True)  # fmt: skip
    cpu, api = cpu_seconds(server.proc.pid) - cpu0, np.subtract(tree_cpu(pids), api0)
    out = done.stdout
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    timeouts = int(errors[4]) if errors else 0  # answered after wrk's 2 s: counted, not fatal
    if "Non-2xx" in out or (errors and any(int(n) for n in errors.groups()[:3])) or done.stderr:
        raise RuntimeError(f"{server.processes} API processes, -c{clients}: errors\n{out}\n"
                           f"{done.stderr}")  # fmt: skip
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]

    def percentile(p: int) -> float:
        found = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if found is None:
            raise RuntimeError(f"no {p}th percentile in wrk's output:\n{out}")
        return float(found[1]) * _WRK_UNITS[found[2]]

    split = [float(s) for s in api / max(api.sum(), 1e-9)]
    return Round(rps, percentile(50), percentile(99), cpu / total * 1e3, split, load, timeouts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk's run per case and round")
    parser.add_argument("--processes", type=lambda v: [int(p) for p in v.split(",")],
                        default=[1, 2])  # fmt: skip
    parser.add_argument("--clients", type=lambda v: [int(c) for c in v.split(",")],
                        default=[1, 16, 64])  # fmt: skip
    args = parser.parse_args()

    x, y = iris()
    result = models.fit(NETWORK, TRAINING, x, y, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="fitserve-bench-"))
    database_url = f"sqlite:///{tmp / 'bench.db'}"
    model_id = store_model(database_url, models.save_model(result, NETWORK),
                           result.history[-1].as_dict())  # fmt: skip
    script = tmp / "predict.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{json.dumps({'inputs': rows(1, x)})}]==]\n")  # fmt: skip
    servers = [start(p, database_url, tmp) for p in args.processes]
    results: dict[tuple[int, int], list[Round]] = {}
    started = datetime.now(UTC)
    try:
        for server in servers:
            server.wait_ready()
        cases = list(itertools.product(servers, args.clients))
        for r in range(args.rounds):
            for server, clients in cases[r % len(cases) :] + cases[: r % len(cases)]:
                url = f"http://127.0.0.1:{server.port}/v1/models/{model_id}/predict"
                got = measure(server, clients, args.seconds, script, url)
                results.setdefault((server.processes, clients), []).append(got)
                print(f"  round {r + 1}: {server.processes} API process(es), {clients:2d} "
                      f"clients: {got.rps:6.0f} req/s, {got.cpu_ms:.2f} ms CPU/request, "
                      f"load {got.load:.1f}", flush=True)  # fmt: skip
        rss = {server.processes: server.rss_mb() for server in servers}
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(args, results, started, rss))


def report(args: argparse.Namespace, results: dict[tuple[int, int], list[Round]],
           started: datetime, rss: dict[int, list[float]]) -> str:  # fmt: skip
    def median(key: tuple[int, int]) -> Round:
        ranked = sorted(results[key], key=lambda r: r.rps)
        return ranked[len(ranked) // 2]

    loads = sorted(r.load for rounds in results.values() for r in rounds)
    lines = [
        f"Commit {commit(ROOT)}"
        + (" (uncommitted changes)" if _dirty() else "")
        + f"; {started:%Y-%m-%d %H:%M} UTC. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), Python {platform.python_version()}; {args.rounds} "
        f"interleaved rounds of {args.seconds:g} s per case (wrk -t1 -cN, 1-row JSON body); "
        f"1-minute load average at the start of the runs {loads[0]:.1f}–{loads[-1]:.1f}.",
        "",
        "| API processes | clients | requests/s (range over rounds) | p50 ms | p99 ms "
        "| server CPU ms/request (range) | CPU split between processes | wrk timeouts (> 2 s), "
        "all rounds |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for clients, processes in itertools.product(args.clients, args.processes):
        rounds = results[(processes, clients)]
        m = median((processes, clients))
        rps = sorted(r.rps for r in rounds)
        cpu = sorted(r.cpu_ms for r in rounds)
        split = " / ".join(f"{s:.0%}" for s in m.split) if processes > 1 else "–"
        lines.append(f"| {processes} | {clients} | {m.rps:.0f} ({rps[0]:.0f}–{rps[-1]:.0f}) | "
                     f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.cpu_ms:.2f} ({cpu[0]:.2f}–"
                     f"{cpu[-1]:.2f}) | {split} | {sum(r.timeouts for r in rounds)} |")  # fmt: skip
    if len(args.processes) > 1:
        lines.append("")
        base = args.processes[0]
        for clients, processes in itertools.product(args.clients, args.processes[1:]):
            pairs = zip(results[(processes, clients)], results[(base, clients)], strict=True)
            by_round = sorted(a.rps / b.rps for a, b in pairs)
            mid = median((processes, clients)).rps / median((base, clients)).rps
            lines.append(f"- {clients} clients: {processes} processes / {base}: {mid:.2f}x "
                         f"requests/s ({by_round[0]:.2f}–{by_round[-1]:.2f}x by round)"
                         )  # fmt: skip
    memory = "; ".join(f"{p} process(es): " + ", ".join(f"{mb:.0f}" for mb in sizes) + " MB"
                       for p, sizes in rss.items())  # fmt: skip
    lines += [
        "",
        f"Resident memory of each API process after the runs (one model cached): {memory}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
