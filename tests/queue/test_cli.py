"""The commands themselves: `fitserve migrate`, `fitserve worker`, `fitserve serve`, as a user
runs them (fresh interpreters, real signals). Slow: each starts Python and imports torch."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from queue_kit import IRIS_NETWORK, finished, iris_dataset_row, iris_training, wait_for
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.queue import store
from app.tables import Job

FITSERVE = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
pytestmark = pytest.mark.slow


def fitserve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
    env.update(FITSERVE_POLL_SECONDS="0.1", FITSERVE_CPU_THREADS="1", **extra)
    return env


def queue_iris_job(sessions: sessionmaker[Session], epochs: int = 3) -> str:
    with sessions.begin() as session:
        dataset = iris_dataset_row()
        session.add(dataset)
        session.flush()
        job = Job(
            dataset_id=dataset.id,
            network=IRIS_NETWORK,
            training=iris_training(epochs=epochs),
            epochs=epochs,
        )
        return store.enqueue_job(session, job=job).id


def read_job(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_migrate_then_a_standalone_worker_trains_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    migrated = subprocess.run(
        [*FITSERVE, "migrate", "--database-url", url],
        env=fitserve_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "latest schema" in migrated.stdout
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    job_id = queue_iris_job(sessions)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*FITSERVE, "worker", "--database-url", url, "--device", "cpu"],
            env=fitserve_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        job = wait_for(
            finished(lambda j: read_job(sessions, j), job_id), timeout=180, what="the job"
        )
        assert job.status == "succeeded", log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
        engine.dispose()
    assert "training on cpu" in log.read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_runs_the_api_and_a_worker_restarts_it_and_stops_all_on_ctrl_c(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/serve.db"
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [*FITSERVE, "serve", "--port", str(port), "--workers", "1", "--database-url", url],
            env=fitserve_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    engine = make_engine(url)
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=180, what=f"the API to answer:\n{log.read_text()}")
        sessions = make_sessionmaker(engine)  # serve ran `upgrade head` before starting
        job_id = queue_iris_job(sessions)
        job = wait_for(
            finished(lambda j: read_job(sessions, j), job_id), timeout=180, what="the job"
        )
        assert job.status == "succeeded", log.read_text()
        # No --device and no FITSERVE_DEVICE: "auto", placed per job by models.fit
        assert job.device == "cpu"
        assert f"job {job_id} trains on cpu (auto: " in log.read_text()

        # A worker that dies is restarted.
        first_worker = int(re.findall(r"started worker 1 \(pid (\d+)\)", log.read_text())[0])
        os.kill(first_worker, signal.SIGKILL)
        wait_for(
            lambda: len(re.findall(r"started worker 1 \(pid", log.read_text())) == 2,
            timeout=30,
            what="the worker to be restarted",
        )

        serve.send_signal(signal.SIGINT)  # Ctrl-C
        assert serve.wait(timeout=90) == 0, log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
        engine.dispose()
    children = [int(p) for p in re.findall(r"started \w+(?: \d+)? \(pid (\d+)\)", log.read_text())]
    assert len(children) == 3  # the API, the worker, its replacement
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
