"""Studies: what pruning saves, and what a trial costs beyond its training.

    .venv/bin/python bench/studies.py [--trials 40] [--workers 2] [--postgres URL]

Runs the same 40-trial TPE study on the built-in wine dataset twice, once without a pruner and
once with each pruner named by --pruners (median and hyperband by default), on a fresh SQLite
file (or a fresh Postgres database with --postgres), with real `fitserve worker` processes
(default settings, one CPU thread each). For each run it prints:

- wall time from the study's creation to its completion;
- epochs trained in all (the sum over trials of their recorded epochs) and the saving against
  the unpruned run;
- the best objective (val_loss, minimized) and its distance from the unpruned run's best;
- per trial: submit-to-running (the trial's job `started_at` minus the trial row's `created_at`,
  both on the database's clock) and start-up (the first epoch's row written, minus `started_at`,
  minus that epoch's own training seconds: claim, fork, decode, build, first-step set-up).

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "queue")]

from queue_kit import worker_process  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker, upgrade_head  # noqa: E402
from app.services import studies  # noqa: E402
from app.services.datasets import register_builtins  # noqa: E402
from app.studies.schemas import StudyCreate  # noqa: E402
from app.tables import Job, JobMetric, Study, StudyTrial  # noqa: E402

EPOCHS = 20
STUDY: dict[str, Any] = {
    "dataset": "wine",
    "network": {
        "layers": [
            {"type": "dense", "units": 16, "activation": "relu", "input_dim": 13},
            {"type": "dropout", "rate": 0.2},
            {"type": "dense", "units": 3, "activation": "softmax"},
        ]
    },
    "training": {
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "adam",
        "batch_size": 16,
        "epochs": EPOCHS,
        "standardize": True,
        "validation_split": 0.2,
        "shuffle": True,
        "seed": 1,
    },
    "search_space": {
        "network.layers[0].units": {"int": [2, 64], "log": True},
        "network.layers[1].rate": {"float": [0.0, 0.5]},
        "training.optimizer.learning_rate": {"float": [1e-5, 1e-2], "log": True},
        "training.batch_size": {"choice": [8, 16, 32, "full"]},
    },
    "objective": {"metric": "val_loss", "direction": "minimize"},
    "sampler": "tpe",
    "seed": 11,
}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _fresh_postgres(url: str) -> str:
    name = f"fitserve_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return url.rsplit("/", 1)[0] + "/" + name


def run(url: str, *, pruner: str, trials: int, workers: int, seed: int) -> dict[str, Any]:
    upgrade_head(url)
    settings = Settings(database_url=url)
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as session:
        register_builtins(session)
    body = StudyCreate.model_validate_json(
        json.dumps(
            {
                **STUDY,
                "name": f"wine-{pruner}",
                "n_trials": trials,
                "max_parallel": workers,
                "pruner": pruner,
                "seed": seed,
            }
        )
    )
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["app.queue.worker"])
    procs = [
        context.Process(  # type: ignore[attr-defined]
            target=worker_process,
            args=(Settings(database_url=url, cpu_threads=1, device="cpu"), None),
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(3)  # the workers are up and polling before the clock starts
    started = time.monotonic()
    with sessions.begin() as session:
        study_id = studies.create_study(session, owner=None, body=body, settings=settings).id
    while True:
        with sessions() as session:
            study = session.get(Study, study_id)
            assert study is not None
            if study.status == "completed":
                break
        time.sleep(0.2)
    wall = time.monotonic() - started
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(30)
    with sessions() as session:
        rows = session.execute(
            select(StudyTrial, Job)
            .join(Job, Job.id == StudyTrial.job_id)
            .where(StudyTrial.study_id == study_id)
        ).all()
        waits, startups, epochs = [], [], 0
        for trial, job in rows:
            epochs += job.epoch
            if job.started_at is None:
                continue
            waits.append((_utc(job.started_at) - _utc(trial.created_at)).total_seconds())
            first = session.get(JobMetric, (job.id, 1))
            if first is not None:
                startups.append(
                    (_utc(first.created_at) - _utc(job.started_at)).total_seconds()
                    - float(first.values.get("seconds") or 0.0)
                )
        values = [t.value for t, _ in rows if t.state == "complete" and t.value is not None]
        states = [t.state for t, _ in rows]
    return {
        "pruner": pruner,
        "wall": wall,
        "epochs": epochs,
        "best": min(values),
        "pruned": states.count("pruned"),
        "complete": states.count("complete"),
        "wait_median": statistics.median(waits),
        "startup_median": statistics.median(startups),
        "trials": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pruners", nargs="+", default=["median", "successive_halving", "hyperband"]
    )
    parser.add_argument("--postgres", help="a Postgres URL to run on instead of SQLite")
    parser.add_argument("--seed", type=int, default=11, help="the TPE sampler's seed")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, pruner in enumerate(["none", *args.pruners]):
            url = (
                _fresh_postgres(args.postgres)
                if args.postgres
                else f"sqlite:///{tmp}/studies-{index}.db"
            )
            try:
                result = run(
                    url, pruner=pruner, trials=args.trials, workers=args.workers, seed=args.seed
                )
            finally:
                if args.postgres:  # the run's own database, not left on the shared server
                    with psycopg.connect(args.postgres, autocommit=True) as conn:
                        name = url.rsplit("/", 1)[1]
                        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    base = results[0]
    print(
        f"\n{args.trials} trials of wine (TPE, seed {args.seed}, {EPOCHS} epochs each), "
        f"{args.workers} workers, {'Postgres' if args.postgres else 'SQLite'}\n"
    )
    print(
        "| pruner | wall s | epochs trained | saved vs none | pruned | best val_loss | "
        "best vs none | submit-to-running median s | start-up median s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        saved = 1 - r["epochs"] / base["epochs"]
        worse = (r["best"] - base["best"]) / abs(base["best"])
        print(
            f"| {r['pruner']} | {r['wall']:.1f} | {r['epochs']} | {saved:.0%} | {r['pruned']} | "
            f"{r['best']:.4f} | {worse:+.1%} | {r['wait_median']:.2f} | "
            f"{r['startup_median']:.2f} |"
        )


if __name__ == "__main__":
    main()
