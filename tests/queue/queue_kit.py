"""Helpers shared by the queue tests; the fixtures built on them live in conftest.py.

(A uniquely named module rather than imports from conftest: test directories here are not
packages, so `conftest` would be ambiguous.)
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.csv_ingest import parse_csv
from app.data import BUILTINS
from app.job_status import TERMINAL
from app.parent_death import die_with_parent
from app.queue.worker import run_worker
from app.tables import Dataset, Job, JobCheckpoint, JobClaim, JobMetric

# A job with this name kills its training process on every attempt (app/queue/child.py's hook).
POISON_JOB_NAME = "fitserve-test-poison"
# A job with this name raises torch.cuda.OutOfMemoryError in its training process (same hook).
OOM_JOB_NAME = "fitserve-test-oom"
# A job named this + a key of app.queue.child.FAULTS raises that GPU error at its first batch.
FAULT_JOB_PREFIX = "fitserve-test-fault:"
# Short intervals so tests run in seconds; lease >= 3x heartbeat as in production.
WORKER_SETTINGS: dict[str, Any] = {
    "poll_seconds": 0.05,
    "heartbeat_seconds": 0.5,
    "lease_seconds": 5.0,
    "retry_backoff_seconds": 0.05,
    "shutdown_grace_seconds": 3.0,
    "cpu_threads": 1,
    "device": "cpu",
}

IRIS_NETWORK: dict[str, Any] = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


def worker_process(settings: Settings, log_file: str | None = None) -> None:
    """A worker as a multiprocessing child (tests, bench/): the same `run_worker` as `fitserve
    worker`, dying with its parent, its exit code the process's."""
    die_with_parent(signal.SIGTERM)
    logging.basicConfig(
        filename=log_file,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    raise SystemExit(run_worker(settings))


MakeJob = Callable[..., str]
JobState = Callable[[str], Job]


def iris_training(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "adam",
        "epochs": 1,
        "batch_size": 10,
        "seed": 1,
    }
    config.update(overrides)
    return config


def iris_dataset_row(rows: int | None = None) -> Dataset:
    """The real iris data (shipped in app/data), encoded as the worker reads it."""
    iris = parse_csv(BUILTINS["iris"].read_bytes(), target="species")
    x = np.ascontiguousarray(iris.x[:rows], dtype=np.float32)  # (rows, 4)
    y = np.ascontiguousarray(iris.y[:rows], dtype=np.int64)  # (rows,) class indices
    features = st_save({"x": x})
    targets = st_save({"y": y})
    return Dataset(
        name="iris",
        task="classification",
        rows=int(x.shape[0]),
        n_features=4,
        n_outputs=1,
        feature_names=iris.feature_names,
        target_names=["species"],
        classes=iris.classes,
        features=features,
        targets=targets,
        sha256=hashlib.sha256(features + targets).hexdigest(),
    )


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def finished(job_state: JobState, job_id: str) -> Callable[[], Job | None]:
    def check() -> Job | None:
        job = job_state(job_id)
        return job if job.status in TERMINAL else None

    return check


def metrics_of(sessions: sessionmaker[Session], job_id: str) -> list[JobMetric]:
    with sessions() as session:
        query = select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.epoch)
        return list(session.scalars(query))


def checkpoints_of(sessions: sessionmaker[Session], job_id: str) -> int:
    """How many checkpoint rows the job has (one while it can resume, none once it ended)."""
    with sessions() as session:
        query = (
            select(func.count()).select_from(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
        )
        return session.scalar(query) or 0


def claims_of(sessions: sessionmaker[Session], job_id: str) -> list[JobClaim]:
    with sessions() as session:
        query = select(JobClaim).where(JobClaim.job_id == job_id).order_by(JobClaim.lease_token)
        return list(session.scalars(query))


def assert_no_overlapping_claims(claims: list[JobClaim]) -> None:
    """Each of a job's executions (claim .. end) ends before the next one starts."""
    for earlier, later in zip(claims, claims[1:], strict=False):
        assert earlier.ended_at is not None, f"claim {earlier.lease_token} never ended"
        assert earlier.ended_at <= later.claimed_at, (earlier.lease_token, later.lease_token)
    assert claims and claims[-1].ended_at is not None


@dataclass
class WorkerHandle:
    process: multiprocessing.process.BaseProcess
    log: Path

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait: the worker's graceful path. Returns the exit code."""
        if self.process.is_alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        self.process.join(timeout)
        return self.process.exitcode


StartWorker = Callable[..., WorkerHandle]
