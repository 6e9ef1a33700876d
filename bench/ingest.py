"""Dataset upload: today's Arrow reader against the csv.reader parser it replaced, side by side.

Files (generated once, seed 0): 20 float features (5 decimals, as `repr` writes them) and a
3-class text label, at 100k / 500k / 900k rows, as CSV and as Parquet (float64 columns, one row
group per 128k rows). Each upload goes to a fresh `uvicorn` process (so its peak, VmHWM read from
/proc after the answer, is its own), SQLite, cell and body limits raised so every file is taken:

- base-csv, base-parquet: the API at the commit before the Arrow reader (`--base`, default
  `git merge-base` of main's first Arrow commit's parent; checked out with `git worktree add
  --detach` into a temporary directory and run from there with this tree's virtualenv)
- csv, parquet: this tree

Two measures per file and variant, each in a fresh process:

- parse: the parser alone (`parse_csv` / `parse_parquet` of the base tree, `parse_upload` of this
  one) reading the file from disk, its peak RSS above the process's idle RSS;
- api: the POST to uvicorn (multipart upload, spooling, parse, the SQLite insert and commit),
  rows / seconds of the request, and the API process's VmHWM above its idle RSS.

Both are also given as a multiple of the stored float32 features (rows x 20 x 4 bytes). Rounds
interleave the variants, the order rotating each round, because the machine is shared.

    python bench/ingest.py [--rounds 3] [--sizes 100000,500000,900000] [--base COMMIT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 20
VARIANTS = ("base-csv", "csv", "base-parquet", "parquet")


def prepare(tmp: Path, rows: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).round(5)
    labels = np.array(["setosa", "versicolor", "virginica"])[rng.integers(0, 3, rows)]
    table = pa.table({**{f"f{i}": x[:, i] for i in range(FEATURES)}, "species": labels})
    csv_path, parquet_path = tmp / f"{rows}.csv", tmp / f"{rows}.parquet"
    pa_csv.write_csv(table, csv_path, pa_csv.WriteOptions(quoting_style="none"))
    pq.write_table(table, parquet_path, row_group_size=128 * 1024)
    return {"csv": csv_path, "parquet": parquet_path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


@contextlib.contextmanager
def api_server(tree: Path, url: str, **settings: int) -> Iterator[tuple[str, int]]:
    """uvicorn serving `tree`'s app (migrated first) on the database at `url`, with
    FITSERVE_MAX_DATASET_CELLS at 100 M and `settings` as FITSERVE_* variables; yields its base
    URL and process id once /health answers."""
    import httpx

    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "FITSERVE_DATABASE_URL": url,
        "FITSERVE_MAX_DATASET_CELLS": str(100_000_000),
        **{f"FITSERVE_{k.upper()}": str(v) for k, v in settings.items()},
    }
    migrate = (
        "import os; from app.db import upgrade_head; "
        "upgrade_head(os.environ['FITSERVE_DATABASE_URL'])"
    )
    subprocess.run([sys.executable, "-c", migrate], env=env, cwd=tree, check=True)
    code = (
        "import uvicorn; from app.main import create_app; "
        f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')"
    )
    server = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tree)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if server.poll() is not None:
                raise RuntimeError(f"the API server exited with {server.returncode}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(30)


def upload(tree: Path, tmp: Path, payload: Path, rows: int) -> dict[str, Any]:
    import httpx

    url = f"sqlite:///{tmp}/api-{_free_port()}.db"
    with api_server(tree, url, max_body_bytes=2 * 1024**3) as (base, pid):
        idle = _vm(pid, "VmRSS")
        with payload.open("rb") as f:
            t0 = time.perf_counter()
            response = httpx.post(
                f"{base}/v1/datasets", files={"file": (payload.name, f)},
                data={"target": "species", "name": "bench"}, timeout=1800,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
        assert response.status_code == 201, response.text[:500]
        assert response.json()["rows"] == rows
        peak = _vm(pid, "VmHWM")
        return {"seconds": seconds, "idle_mb": idle, "peak_mb": peak, "rows_s": rows / seconds,
                "above_idle_mb": peak - idle}  # fmt: skip


PARSE_NEW = """
from app.uploads import UploadLimits, parse_upload
limits = UploadLimits(max_cells=100_000_000, max_table_bytes=2**40, max_text_bytes=2**40)
with open(PATH, "rb") as f:
    parsed = parse_upload(f, filename=None, content_type=None, target="species", task=None,
                          limits=limits)
"""
PARSE_BASE = {
    "csv": """
from app.dataset_codec import parse_csv
with open(PATH, "rb") as f:
    parsed = parse_csv(f, target="species", max_cells=100_000_000)
""",
    # the old route read a Parquet upload whole into memory, then parsed it from there
    "parquet": """
from app.parquet import parse_parquet
with open(PATH, "rb") as f:
    parsed = parse_parquet(f.read(), target="species", task=None, max_bytes=2**40)
""",
}
CHILD = """
import json, sys, time
from pathlib import Path
PATH = sys.argv[1]
def vm(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
import app.dataset_codec, app.parquet, numpy, pyarrow.csv, pyarrow.parquet  # not the parse's
try:
    import app.uploads
except ImportError:  # the base tree has no app/uploads.py
    pass
idle = vm("VmRSS")
t0 = time.perf_counter()
{parse}
seconds = time.perf_counter() - t0
assert parsed.x.shape[0] == {rows}
print(json.dumps({{"seconds": seconds, "idle_mb": idle, "peak_mb": vm("VmHWM")}}))
"""


def parse_only(tree: Path, payload: Path, rows: int, kind: str, base: bool) -> dict[str, Any]:
    """The parser alone, in a fresh process: what each reads the same file with."""
    parse = PARSE_BASE[kind] if base else PARSE_NEW
    code = CHILD.format(parse=parse, rows=rows)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code, str(payload)], env=env, cwd=tree,
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    run = json.loads(out.strip().splitlines()[-1])
    run["rows_s"] = rows / run["seconds"]
    run["above_idle_mb"] = run["peak_mb"] - run["idle_mb"]
    return dict(run)


def base_tree(commit: str, tmp: Path) -> Path:
    tree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="100000,500000,900000")
    parser.add_argument("--base", required=True, help="the commit before the Arrow reader")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    loads = []
    with tempfile.TemporaryDirectory(prefix="fitserve-ingest-") as name:
        tmp = Path(name)
        tree = base_tree(args.base, tmp)
        try:
            files = {rows: prepare(tmp, rows) for rows in sizes}
            for round_ in range(args.rounds):
                order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
                for rows in sizes:
                    for variant in order:
                        loads.append(os.getloadavg()[0])
                        kind = variant.removeprefix("base-")
                        base = variant.startswith("base-")
                        where = tree if base else ROOT
                        parse = parse_only(where, files[rows][kind], rows, kind, base)
                        results.setdefault(("parse " + variant, rows), []).append(parse)
                        run = upload(where, tmp, files[rows][kind], rows)
                        results.setdefault(("api " + variant, rows), []).append(run)
                        for what, got in (("parse", parse), ("api", run)):
                            shown = {k: round(v, 2) for k, v in got.items()}
                            print(what, variant, rows, shown, flush=True)
            sizes_mb = {(k, r): files[r][k].stat().st_size / 1e6 for r in sizes for k in files[r]}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False)  # fmt: skip
    report(results, sizes, variants, sizes_mb, loads, args)


def report(
    results: dict[tuple[str, int], list[dict[str, Any]]],
    sizes: list[int],
    variants: list[str],
    sizes_mb: dict[tuple[str, int], float],
    loads: list[float],
    args: argparse.Namespace,
) -> None:
    print()
    print(f"`python bench/ingest.py --rounds {args.rounds} --base {args.base[:12]}` "
          f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs; "
          f"1-min load before each upload {min(loads):.2f}-{max(loads):.2f}):")  # fmt: skip
    for mode in ("parse", "api"):
        print()
        print("| rows | " + mode + " | file MB | rows/s (median) | spread (min-max) | vs base "
              "(median; worst pairing) | peak above idle MB (median, max) | x stored float32 "
              "(median, worst) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for rows in sizes:
            stored_mb = rows * FEATURES * 4 / 1e6
            for variant in variants:
                runs = results[(f"{mode} {variant}", rows)]
                speed = [r["rows_s"] for r in runs]
                above = [r["above_idle_mb"] for r in runs]
                kind = variant.removeprefix("base-")
                base = [r["rows_s"] for r in results.get((f"{mode} base-{kind}", rows), [])]
                ratio = statistics.median(speed) / statistics.median(base) if base else math.nan
                worst = min(speed) / max(base) if base else math.nan
                print(f"| {rows:,} | {variant} | {sizes_mb[(kind, rows)]:.0f} | "
                      f"{statistics.median(speed):,.0f} | {min(speed):,.0f}-{max(speed):,.0f} | "
                      f"{ratio:.1f}x; {worst:.1f}x | {statistics.median(above):,.0f} "
                      f"({max(above):,.0f}) | {statistics.median(above) / stored_mb:.1f}x, "
                      f"{max(above) / stored_mb:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
