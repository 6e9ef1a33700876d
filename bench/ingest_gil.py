"""Where a dataset upload holds the GIL, and what it holds in memory, in-process, side by side.

`create_from_csv` (the route's worker-thread part: parse, encode, insert) plus the commit, on
the 20-feature files bench/ingest.py writes, each run in a fresh process while a sampler thread
sleeps 1 ms in a loop: a wake-up later than `--stall-ms` is a stretch in which some thread held
the GIL, or the OS did not schedule the sampler (the machine is shared). Each is reported with
where the uploading thread stood when the sampler ran again (the innermost frame and the
innermost frame under app/) and the CPU time that thread used meanwhile: "busy" stalls are those
in which it ran for at least 80% of the time (holding the GIL, or in C code without it while the
OS kept the sampler waiting); in the others it sat waiting for I/O or a CPU, which is the
machine's doing. The same thread reads VmRSS every wake-up; the peak above the process's RSS
before the upload (VmHWM reset through /proc/self/clear_refs) is reported too, over the stored
float32 features.

Variants: `base` (the tree at `--base`, checked out with `git worktree add --detach` into a
temporary directory and run with this tree's virtualenv) and `new` (this tree), interleaved, the
order rotating each round. SQLite by default (a fresh file per run); `--postgres` names a server
on which each tree gets a fresh database of its own (`fitserve_bench_base`, `fitserve_bench_new`,
dropped first: the trees' migrations differ).

    python bench/ingest_gil.py --base COMMIT [--rows 900000] [--rounds 3] [--stall-ms 20]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import FEATURES, base_tree, prepare  # noqa: E402

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path

path, url, stall_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) / 1000
from app.config import Settings
from app.db import make_engine, make_sessionmaker, upgrade_head
from app.services.datasets import create_from_csv

def vm(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)

upgrade_head(url)
settings = Settings(database_url=url, max_dataset_cells=100_000_000, max_body_bytes=2**31)
engine = make_engine(url)
sessions = make_sessionmaker(engine)
main = threading.get_ident()
main_cpu = time.pthread_getcpuclockid(main)
stalls, done = [], threading.Event()
rss = {"peak": 0.0}

def where():
    frame = sys._current_frames().get(main)
    inner = f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"
    while frame is not None and "/app/" not in frame.f_code.co_filename:
        frame = frame.f_back
    if frame is None:
        return inner
    code = frame.f_code
    return f"{inner} < {code.co_name} ({Path(code.co_filename).name}:{frame.f_lineno})"

def sample():
    while not done.is_set():
        c0, t0 = time.clock_gettime(main_cpu), time.perf_counter()
        time.sleep(0.001)
        late = time.perf_counter() - t0 - 0.001
        if late > stall_s:
            cpu = time.clock_gettime(main_cpu) - c0
            stalls.append((round(late * 1000, 1), round(cpu * 1000, 1), where()))
        rss["peak"] = max(rss["peak"], vm("VmRSS"))

Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
idle = vm("VmRSS")
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
with sessions() as session, path.open("rb") as f:
    row = create_from_csv(session, owner=None, name="gil", data=f, target="species", task=None,
                          settings=settings, filename=path.name)
    rows = row.rows
    session.commit()
seconds = time.perf_counter() - t0
done.set()
sampler.join()
print(json.dumps({"seconds": seconds, "rows": rows, "idle_mb": idle,
                  "above_idle_mb": max(vm("VmHWM"), rss["peak"]) - idle, "stalls": stalls}))
"""


def run(tree: Path, path: Path, url: str, stall_ms: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), url, str(stall_ms)],
        env=env, cwd=tree, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return dict(json.loads(out.strip().splitlines()[-1]))


def fresh_postgres(server: str, name: str) -> str:
    """A new, empty database `name` on the Postgres at `server` (a URL), as a psycopg URL."""
    import psycopg

    plain = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return plain.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--rows", type=int, default=900_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stall-ms", type=float, default=20.0)
    parser.add_argument("--postgres", help="a Postgres server's URL (default: SQLite files)")
    args = parser.parse_args()
    variants = ("base", "new")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    loads: list[float] = []
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="fitserve-gil-") as name:
        tmp = Path(name)
        trees = {"base": base_tree(args.base, tmp), "new": ROOT}
        postgres = {
            v: fresh_postgres(args.postgres, f"fitserve_bench_{v}")
            for v in variants
            if args.postgres
        }
        try:
            files = prepare(tmp, args.rows)
            for round_ in range(args.rounds):
                order = variants[round_ % 2 :] + variants[: round_ % 2]
                for kind, path in files.items():
                    for variant in order:
                        url = postgres.get(variant, f"sqlite:///{tmp}/{variant}-{kind}-{round_}.db")
                        loads.append(os.getloadavg()[0])
                        got = run(trees[variant], path, url, args.stall_ms)
                        assert got["rows"] == args.rows
                        results.setdefault((variant, kind), []).append(got)
                        print(variant, kind, round(got["seconds"], 2), "s,",
                              round(got["above_idle_mb"]), "MB above idle,", "stalls:",
                              got["stalls"], flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(trees["base"])],
                           cwd=ROOT, check=False)  # fmt: skip
    stored_mb = args.rows * FEATURES * 4 / 1e6
    engine = "postgres" if args.postgres else "sqlite"
    print()
    print(f"`python bench/ingest_gil.py --rounds {args.rounds} --base {args.base[:12]}` "
          f"({engine}, {started:%Y-%m-%d %H:%M} UTC; 1-min load before each run "
          f"{min(loads):.2f}-{max(loads):.2f}):")  # fmt: skip
    print()
    print(f"| file ({args.rows:,} rows) | tree | seconds (median; min-max) | stalls over "
          f"{args.stall_ms:g} ms, all runs (busy) | longest ms (longest busy) | peak above idle "
          "MB (median; max) | x stored float32 (median; worst) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for kind in files:
        for variant in variants:
            runs = results[(variant, kind)]
            seconds = [r["seconds"] for r in runs]
            above = [r["above_idle_mb"] for r in runs]
            stalls = [s for r in runs for s in r["stalls"]]
            busy = [s for s in stalls if s[1] >= 0.8 * s[0]]
            longest = max((s[0] for s in stalls), default=0.0)
            longest_busy = max((s[0] for s in busy), default=0.0)
            print(f"| {kind} | {variant} | {statistics.median(seconds):.2f}; "
                  f"{min(seconds):.2f}-{max(seconds):.2f} | {len(stalls)} ({len(busy)}) | "
                  f"{longest:.0f} ({longest_busy:.0f}) | "
                  f"{statistics.median(above):.0f}; {max(above):.0f} | "
                  f"{statistics.median(above) / stored_mb:.1f}x; "
                  f"{max(above) / stored_mb:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
