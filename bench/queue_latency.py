"""Queue benchmarks: submit-to-running latency with an idle worker, and claims per second.

    .venv/bin/python bench/queue_latency.py [--postgres URL] [--samples 60] [--jobs 2000]

For SQLite (a fresh file) and Postgres (a fresh database; skipped if it doesn't answer):

1. latency: one idle `fitserve worker` (default settings: 0.5 s poll, LISTEN/NOTIFY on
   Postgres); submit a tiny job, take `started_at` (set by the claim, on the database's clock)
   minus the client's clock just before the submit's COMMIT — same host, same clock — then wait
   for the job to end and a random 0-0.3 s so submits don't line up with the poll.
2. claims/s: 4 processes, each claiming as a worker does (claim_next_job + COMMIT, the reaper
   once a second), then a second transaction that marks the job done (a worker's last commit,
   which carries the last epoch's metrics and the model), until the queue is empty — the
   queue's own throughput, no training; timed until the last claimer finds the queue empty.
   `--claims-only` compares claims side by side (`--variants`): the claim before the fair-share
   counts stopped at the cap, now, and "joined" (each job's end committed with the next claim).
3. drain: 4 real workers training 200 one-epoch iris jobs — jobs/s end to end.

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any, cast

import psycopg
from sqlalchemy import Integer, Table, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "queue")]

from queue_kit import IRIS_NETWORK, iris_dataset_row, iris_training, worker_process  # noqa: E402

from app.auth import create_key  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker, upgrade_head  # noqa: E402
from app.job_status import LEASED  # noqa: E402
from app.queue import store  # noqa: E402
from app.queue.clock import db_now  # noqa: E402
from app.tables import Job  # noqa: E402
from tests.throwaway_postgres import ThrowawayPostgres, server_bindir  # noqa: E402

TINY = iris_training(epochs=1, batch_size="full")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _dataset(url: str) -> str:
    with make_sessionmaker(make_engine(url)).begin() as session:
        row = iris_dataset_row()
        session.add(row)
        session.flush()
        return row.id


def _start_workers(url: str, n: int, **settings: Any) -> list[multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["app.queue.worker"])
    procs: list[multiprocessing.process.BaseProcess] = []
    for _ in range(n):
        proc = context.Process(  # type: ignore[attr-defined]
            target=worker_process, args=(Settings(database_url=url, **settings), None)
        )
        proc.start()
        procs.append(proc)
    return procs


def _stop(procs: list[multiprocessing.process.BaseProcess]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(30)


def latency(url: str, samples: int) -> list[float]:
    dataset_id = _dataset(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    workers = _start_workers(url, 1, cpu_threads=1)
    seconds: list[float] = []
    try:
        for i in range(samples + 1):  # the first one warms the worker up
            session = sessions()
            session.begin()
            job = store.enqueue_job(
                session,
                job=Job(dataset_id=dataset_id, network=IRIS_NETWORK, training=TINY, epochs=1),
            )
            submitted = time.time()
            session.commit()
            session.close()
            while True:
                with sessions() as s:
                    row = s.get(Job, job.id)
                    assert row is not None
                    if row.status in ("succeeded", "failed"):
                        break
                time.sleep(0.01)
            assert row.started_at is not None, row.error
            started_at = row.started_at
            if started_at.tzinfo is None:  # SQLite hands back naive UTC
                started_at = started_at.replace(tzinfo=UTC)
            started = started_at.timestamp()
            if i:
                seconds.append(started - submitted)
            time.sleep(random.uniform(0, 0.3))
    finally:
        _stop(workers)
        engine.dispose()
    return seconds


def _next_job_id_before() -> Any:
    """The next job's id as the claim chose it before its fair-share counts stopped at the cap
    (as of commit cb6e75a): a keyed candidate's share counted all its key's jobs on workers and
    older claimable jobs, once per candidate, so a claim was quadratic in a key's queued jobs.
    A deliberate copy, so each run measures the old claim and the new side by side; keep it as
    it is."""
    candidate = store.jobs.alias("candidate")
    others = store.jobs.alias("others")
    same_key = and_(others.c.owner_id == candidate.c.owner_id, others.c.id != candidate.c.id)
    share = (
        select(func.count())
        .select_from(others)
        .where(
            same_key,
            or_(
                others.c.status.in_(LEASED),
                and_(store._claimable(others), others.c.created_at < candidate.c.created_at),
            ),
        )
        .scalar_subquery()
    )
    keyless = candidate.c.owner_id.is_(None)
    return (
        select(candidate.c.id)
        .where(
            store._claimable(candidate),
            or_(keyless, share < bindparam("max_running_per_key", type_=Integer())),
        )
        .order_by(case((keyless, 0), else_=share), candidate.c.available_at, candidate.c.created_at)
        .limit(1)
        .with_for_update(of=candidate, skip_locked=True)
        .scalar_subquery()
    )


CLAIM_BEFORE = store.ClaimStatements.of(store.claim_update(_next_job_id_before()))


def _claim_before(session: Session, *, worker: str, lease_seconds: float) -> store.Claim | None:
    """store.claim_next_job with the claim statement before (the audit writes as now)."""
    return store.run_claim(
        session,
        CLAIM_BEFORE,
        worker=worker,
        lease_seconds=lease_seconds,
        max_running_per_key=store.DEFAULT_MAX_RUNNING_PER_KEY,
    )


CLAIMS = {"before": _claim_before, "now": store.claim_next_job}


def _end(session: Session, job_id: str) -> None:
    """The job done, as cheaply as the schema allows."""
    jobs = cast(Table, Job.__table__)
    session.execute(
        update(jobs).where(jobs.c.id == job_id).values(status="cancelled", finished_at=db_now())
    )


def _claimer(
    url: str, counts: Any, ended: Any, index: int, start: Any, variant: str, max_seconds: float
) -> None:
    """Claim and end jobs until the queue is empty (or `max_seconds` have passed). Variant
    "joined" ends each job in the transaction that claims the next one, as a worker would if
    it wrote a job's end and its next claim in one commit: one commit per job instead of two."""
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    claim_next = CLAIMS["now" if variant == "joined" else variant]
    claimed = 0
    with engine.connect():  # connected and imported before the clock starts
        pass
    start.wait()
    deadline = time.monotonic() + (max_seconds or float("inf"))
    next_reap = 0.0
    ending: str | None = None
    while time.monotonic() < deadline:
        with sessions.begin() as session:  # the worker's claim transaction
            if ending is not None:
                _end(session, ending)
                ending = None
            if time.monotonic() >= next_reap:
                store.reap_expired_jobs(session)
                next_reap = time.monotonic() + 1.0
            claim = claim_next(session, worker=f"bench-{index}", lease_seconds=60)
        if claim is None:
            with sessions() as session:  # the queue is empty, or every key is at its cap
                if not session.scalar(select(func.count()).where(Job.status == "queued")):
                    break
            continue
        if variant == "joined":
            ending = claim.job_id
        else:
            with sessions.begin() as session:
                _end(session, claim.job_id)
        claimed += 1
    if ending is not None:
        with sessions.begin() as session:
            _end(session, ending)
    ended[index] = time.time()
    counts[index] = claimed
    engine.dispose()


def claims_per_second(
    url: str,
    jobs: int,
    processes: int = 4,
    *,
    variant: str = "now",
    keys: int = 0,
    max_seconds: float = 0.0,
) -> tuple[float, list[int]]:
    """`jobs` queued jobs claimed by `processes` claimers; keyless jobs, or spread round-robin
    over `keys` API keys (the fair-share ordering then counts each key's jobs). With
    `max_seconds`, the claimers stop then, and the rate is of the jobs claimed so far."""
    dataset_id = _dataset(url)
    engine = make_engine(url)
    owners: list[str | None] = [None]
    if keys:
        with make_sessionmaker(engine).begin() as session:
            owners = [create_key(session, name=f"bench-{i}")[0].id for i in range(keys)]
    with engine.begin() as conn:
        conn.execute(
            insert(Job),
            [
                {"id": uuid.uuid4().hex, "dataset_id": dataset_id, "network": {}, "training": {},
                 "epochs": 1, "owner_id": owners[i % len(owners)]}
                for i in range(jobs)
            ],
        )  # fmt: skip
    engine.dispose()
    context = multiprocessing.get_context("spawn")
    counts = context.Array("i", processes)
    ended = context.Array("d", processes)
    start = context.Barrier(processes + 1)
    procs = [
        context.Process(target=_claimer, args=(url, counts, ended, i, start, variant, max_seconds))
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    start.wait()
    started = time.time()
    for proc in procs:
        proc.join()
    # Until the last claimer found the queue empty, not until the processes exited: the exit of
    # an interpreter that imported torch took 10-12 s of the loaded 2-CPU VM, which runs before
    # this change counted as claiming time.
    elapsed = max(ended) - started
    claimed = [int(counts[i]) for i in range(processes)]
    return sum(claimed) / elapsed, claimed


def drain(url: str, jobs: int, workers: int = 4) -> float:
    dataset_id = _dataset(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        for _ in range(jobs):
            store.enqueue_job(
                session,
                job=Job(dataset_id=dataset_id, network=IRIS_NETWORK, training=TINY, epochs=1),
            )
    procs = _start_workers(url, workers, cpu_threads=1, poll_seconds=0.05)
    started = time.perf_counter()
    try:
        while True:
            with sessions() as session:
                left = session.scalar(
                    select(func.count()).where(Job.status.in_(("queued", "running")))
                )
            if left == 0:
                break
            time.sleep(0.05)
    finally:
        elapsed = time.perf_counter() - started
        _stop(procs)
        engine.dispose()
    return jobs / elapsed


class Database:
    def __init__(self, kind: str, postgres: str) -> None:
        self.kind = kind
        self.name = f"fitserve_bench_{uuid.uuid4().hex[:8]}"
        self.tmp = tempfile.mkdtemp(prefix="fitserve-bench-")
        self.postgres = postgres

    def fresh(self) -> str:
        if self.kind == "sqlite":
            url = f"sqlite:///{self.tmp}/{uuid.uuid4().hex[:6]}.db"
        else:
            name = f"fitserve_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(self.postgres, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
            self.created = [*getattr(self, "created", []), name]
            url = Settings(database_url=self.postgres.rsplit("/", 1)[0] + "/" + name).database_url
        upgrade_head(url)
        return url

    def cleanup(self) -> None:
        for name in getattr(self, "created", []):
            with psycopg.connect(self.postgres, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def compare_claims(kinds: list[str], args: argparse.Namespace) -> None:
    """Claims/s of each variant (the claim before, now, ...), one after another within each
    round on fresh databases, so all see the same machine load; each against "before"."""
    loads = [os.getloadavg()[0]]
    rows = []
    for label, kind, server in kinds:
        for keys in args.keys:
            rates: dict[str, list[float]] = {variant: [] for variant in args.variants}
            cut: dict[str, list[str]] = {variant: [] for variant in args.variants}
            for _ in range(args.rounds):
                for variant in args.variants:
                    db = Database(kind, server)
                    try:
                        rate, split = claims_per_second(
                            db.fresh(),
                            args.jobs,
                            variant=variant,
                            keys=keys,
                            max_seconds=args.max_seconds,
                        )
                    finally:
                        db.cleanup()
                    rates[variant].append(rate)
                    if sum(split) < args.jobs:
                        cut[variant].append(f"{sum(split)}")
                    loads.append(os.getloadavg()[0])
                    print(f"{label} keys={keys} {variant}: {rate:.1f}/s {split}", file=sys.stderr)
            for variant in args.variants:
                ratios = [
                    now / before
                    for before, now in zip(rates[args.variants[0]], rates[variant], strict=True)
                ]
                done = f" (cut at {args.max_seconds:.0f} s: {', '.join(cut[variant])} claimed)"
                rows.append(
                    f"| {label} | {keys or 'none'} | {variant} "
                    f"| {' / '.join(f'{r:.1f}' for r in rates[variant])}"
                    f"{done if cut[variant] else ''} "
                    f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
                )
    print(
        f"Machine: {os.cpu_count()} CPUs, 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
        f"during the runs; {args.jobs} jobs queued, claimed by 4 processes per run, "
        f"{args.rounds} rounds.\n"
    )
    print(f"| database | API keys | claim | claims/s per round | / {args.variants[0]} |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres", default=os.environ.get("FITSERVE_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--drain-jobs", type=int, default=200)
    parser.add_argument(
        "--claims-only",
        action="store_true",
        help="only claims/s: the claim before and now, interleaved, --rounds times",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["before", "now"],
        choices=["before", "now", "joined"],
        help="claims compared (the first is the baseline): the claim before, now, and now with "
        "each job's end in the next claim's transaction",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="stop each claims/s run after this long (the rate is of the jobs claimed by then)",
    )
    parser.add_argument(
        "--own-postgres",
        action="store_true",
        help="also a Postgres server of the bench's own (initdb, default settings, fsync on)",
    )
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument(
        "--keys", type=int, nargs="+", default=[0, 4], help="API keys the jobs are spread over"
    )
    args = parser.parse_args()
    kinds = ["sqlite"]
    try:
        with psycopg.connect(args.postgres, connect_timeout=3):
            kinds.append("postgres")
    except psycopg.Error:
        print(f"(Postgres at {args.postgres} does not answer: SQLite only)", file=sys.stderr)
    kinds = [kind for kind in kinds if kind in args.databases]
    if args.claims_only:
        servers = [(kind, kind, args.postgres) for kind in kinds]
        own = None
        if args.own_postgres:
            bindir = server_bindir()
            if bindir is None:
                sys.exit("--own-postgres: no initdb found (install postgresql)")
            own = ThrowawayPostgres(bindir)
            own.start(durable=True)
            servers.append(("postgres, own server (defaults)", "postgres", own.url))
        try:
            compare_claims(servers, args)
        finally:
            if own is not None:
                own.close()
        return
    rows = []
    for kind in kinds:
        db = Database(kind, args.postgres)
        try:
            lat = latency(db.fresh(), args.samples)
            rate, split = claims_per_second(db.fresh(), args.jobs)
            jobs_per_s = drain(db.fresh(), args.drain_jobs)
        finally:
            db.cleanup()
        median, p99 = statistics.median(lat) * 1000, _percentile(lat, 0.99) * 1000
        rows.append(
            f"| {kind} | {median:.0f} ms | {p99:.0f} ms "
            f"| {rate:.0f} ({'/'.join(map(str, split))}) | {jobs_per_s:.1f} |"
        )
        print(rows[-1], file=sys.stderr)
    load = os.getloadavg()
    print(
        f"Machine: {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; "
        f"{args.samples} latency samples, {args.jobs} jobs claimed, "
        f"{args.drain_jobs} jobs drained.\n"
    )
    print(
        "| database | submit-to-running median | p99 | claims/s, 4 processes (per process) "
        "| jobs/s drained by 4 workers (1-epoch iris) |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
