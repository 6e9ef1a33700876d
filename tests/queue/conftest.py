"""Queue fixtures: a session factory on the test's database, the iris dataset as a Dataset row,
job rows built straight through the store (the API is tested elsewhere), and real worker
processes.

Workers are forked from a multiprocessing forkserver that imported the worker (and torch) once
per test session; each is then a separate OS process running the same `run_worker` as
`fitserve worker` (test_cli.py covers the command itself). A worker then starts in tens of
milliseconds instead of the seconds a fresh interpreter spends importing torch.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import pytest
from queue_kit import (
    FAULT_JOB_PREFIX,
    IRIS_NETWORK,
    OOM_JOB_NAME,
    POISON_JOB_NAME,
    WORKER_SETTINGS,
    JobState,
    MakeJob,
    StartWorker,
    WorkerHandle,
    iris_dataset_row,
    iris_training,
    worker_process,
)
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.queue import store
from app.queue.protocol import CRASH_ENV, FAULT_PREFIX_ENV, OOM_ENV
from app.tables import Job


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def iris_id(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        row = iris_dataset_row()
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
def make_job(sessions: sessionmaker[Session], iris_id: str) -> MakeJob:
    """Queue a job through `enqueue_job` (committed); returns its id."""

    def make(
        name: str | None = None,
        *,
        network: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        max_attempts: int = 3,
        dataset_id: str | None = None,
    ) -> str:
        training = training or iris_training()
        with sessions.begin() as session:
            job = store.enqueue_job(
                session,
                job=Job(
                    name=name,
                    dataset_id=dataset_id or iris_id,
                    network=network or IRIS_NETWORK,
                    training=training,
                    epochs=int(training.get("epochs", 1)),
                    max_attempts=max_attempts,
                ),
            )
            return job.id

    return make


@pytest.fixture
def job_state(sessions: sessionmaker[Session]) -> JobState:
    def read(job_id: str) -> Job:
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    return read


@pytest.fixture(scope="session")
def worker_forkserver() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["app.queue.worker"])
    # The forkserver takes its environment when it starts: the fault hooks are enabled there only.
    hooks = {CRASH_ENV: POISON_JOB_NAME, OOM_ENV: OOM_JOB_NAME, FAULT_PREFIX_ENV: FAULT_JOB_PREFIX}
    saved = {name: os.environ.get(name) for name in hooks}
    os.environ.update(hooks)
    try:
        forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    return context


@pytest.fixture
def start_worker(
    database_url: str, worker_forkserver: BaseContext, tmp_path: Path
) -> Iterator[StartWorker]:
    """Start a worker process on the test's database; any still running is killed at teardown."""
    started: list[WorkerHandle] = []

    def start(**overrides: Any) -> WorkerHandle:
        settings = Settings(database_url=database_url, **{**WORKER_SETTINGS, **overrides})
        log = tmp_path / f"worker-{len(started) + 1}.log"
        process = worker_forkserver.Process(  # type: ignore[attr-defined]
            target=worker_process, args=(settings, str(log)), name=f"worker-{len(started) + 1}"
        )
        process.start()
        handle = WorkerHandle(process, log)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.process.is_alive():
            handle.signal(signal.SIGKILL)
        handle.process.join(10)
