"""/health latency while the heaviest dataset uploads are in flight, over uvicorn (real HTTP).

One API process per tree (uvicorn, cell and body limits raised to take the files): this tree's
and, with `--base`, the tree at that commit (checked out with `git worktree add --detach`, run
with this tree's virtualenv). For each file (20 features x ROWS as CSV and as Parquet, generated
as bench/ingest.py does) and each round, one upload to each server in turn (the order rotating
each round) while another client probes that server's GET /health every ~5 ms; reported: the
probes' p50, p99 and max per file and tree over all rounds. SQLite by default; `--postgres`
gives each tree a fresh database on that server. tests/security/test_event_loop.py asserts the
100 ms p99 at the test limits' sizes; this measures it at bench/ingest.py's largest file.

    python bench/ingest_health.py [--rows 900000] [--rounds 3] [--base COMMIT]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import api_server, base_tree, prepare  # noqa: E402
from bench.ingest_gil import fresh_postgres  # noqa: E402


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def upload_while_probing(base: str, path: Path) -> tuple[float, list[float]]:
    """One upload of `path`; the seconds it took and /health's latencies meanwhile."""
    import httpx

    latencies: list[float] = []
    seconds: list[float] = []
    done = threading.Event()

    def upload() -> None:
        try:
            with httpx.Client(base_url=base, timeout=600) as http, path.open("rb") as f:
                t0 = time.perf_counter()
                form = {"target": "species", "name": "h"}
                r = http.post("/v1/datasets", files={"file": (path.name, f)}, data=form)
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
    assert seconds, "the upload failed"
    return seconds[0], latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=900_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", help="also run the tree at this commit, interleaved")
    parser.add_argument("--postgres", help="a Postgres server's URL (default: SQLite files)")
    args = parser.parse_args()
    loads: list[float] = []
    started = datetime.now(UTC)
    with (
        tempfile.TemporaryDirectory(prefix="fitserve-health-") as name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(name)
        trees = {"new": ROOT}
        if args.base:
            trees = {"base": base_tree(args.base, tmp), **trees}
            stack.callback(subprocess.run, ["git", "worktree", "remove", "--force",
                                            str(trees["base"])], cwd=ROOT, check=False)  # fmt: skip
        files = prepare(tmp, args.rows)
        servers = {}
        for variant, tree in trees.items():
            url = (
                fresh_postgres(args.postgres, f"fitserve_health_{variant}")
                if args.postgres
                else f"sqlite:///{tmp}/{variant}.db"
            )
            servers[variant] = stack.enter_context(api_server(tree, url))[0]
        variants = list(servers)
        seconds: dict[tuple[str, str], list[float]] = {}
        latencies: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for kind, path in files.items():
                for variant in order:
                    loads.append(os.getloadavg()[0])
                    took, probes = upload_while_probing(servers[variant], path)
                    seconds.setdefault((kind, variant), []).append(took)
                    latencies.setdefault((kind, variant), []).extend(probes)
                    print(kind, variant, f"{took:.1f} s, p99 {_p(probes, 0.99) * 1000:.1f} ms, "
                          f"max {max(probes) * 1000:.1f} ms", flush=True)  # fmt: skip
    base = f" --base {args.base[:12]}" if args.base else ""
    engine = "postgres" if args.postgres else "sqlite"
    print()
    print(f"`python bench/ingest_health.py --rows {args.rows} --rounds {args.rounds}{base}` "
          f"({engine}, {started:%Y-%m-%d %H:%M} UTC; 1-min load before each upload "
          f"{min(loads):.2f}-{max(loads):.2f}):")  # fmt: skip
    print()
    print(f"| upload ({args.rows:,} rows) | tree | seconds per upload | probes | p50 ms | p99 ms "
          "| max ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for kind in files:
        for variant in variants:
            got, took = latencies[(kind, variant)], seconds[(kind, variant)]
            print(f"| {kind} | {variant} | {', '.join(f'{s:.1f}' for s in took)} "
                  f"| {len(got)} | {_p(got, 0.5) * 1000:.1f} | {_p(got, 0.99) * 1000:.1f} | "
                  f"{max(got) * 1000:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
