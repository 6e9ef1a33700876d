"""Issue 4's acceptance: jobs survive killed, stalled and many workers, and a database restart.

Every job here trains the real iris data in a real worker process; kills and stops are real
signals. Resumed runs are compared with uninterrupted ones on CPU with the same seed.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from queue_kit import (
    JobState,
    MakeJob,
    StartWorker,
    WorkerHandle,
    assert_no_overlapping_claims,
    checkpoints_of,
    claims_of,
    finished,
    iris_dataset_row,
    iris_training,
    metrics_of,
    wait_for,
)
from safetensors.numpy import load as st_load
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.main import create_app
from app.queue.protocol import EXIT_LEASE_LOST
from app.tables import Job, JobClaim, JobMetric, Model
from tests.throwaway_postgres import ThrowawayPostgres

EPOCHS = 20
# batch 5 on 150 rows: 30 steps an epoch, long enough to act between epochs, short overall.
SLOW_TRAINING = iris_training(epochs=EPOCHS, batch_size=5)

postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def weights_of(sessions: sessionmaker[Session], job_id: str) -> dict[str, np.ndarray]:
    with sessions() as session:
        model = session.scalar(select(Model).where(Model.job_id == job_id))
        assert model is not None
        return st_load(model.weights)


def assert_same_training(
    sessions: sessionmaker[Session], resumed: str, reference: str, *, epochs: int
) -> None:
    """Same per-epoch losses and bit-identical final weights as the uninterrupted run."""
    ours, theirs = metrics_of(sessions, resumed), metrics_of(sessions, reference)
    assert [m.epoch for m in ours] == list(range(1, epochs + 1))
    assert [m.loss for m in ours] == [m.loss for m in theirs]
    mine, expected = weights_of(sessions, resumed), weights_of(sessions, reference)
    assert mine.keys() == expected.keys()
    for name in expected:
        assert np.array_equal(mine[name], expected[name]), name


def attempt_boundary(sessions: sessionmaker[Session], job_id: str) -> int:
    """The last epoch the first attempt wrote; checks the second wrote all the rest, in order."""
    tokens = [(m.epoch, m.lease_token) for m in metrics_of(sessions, job_id)]
    first = [epoch for epoch, token in tokens if token == 1]
    assert first == list(range(1, len(first) + 1)), tokens
    assert all(token == 2 for epoch, token in tokens if epoch > len(first)), tokens
    return len(first)


def freeze_between_transactions(worker: WorkerHandle, database_url: str) -> None:
    """SIGSTOP the worker. On SQLite, make sure it isn't holding the database's single write
    lock: SQLite has no server to end a frozen writer's transaction, so every other writer would
    wait for it (Postgres ends it: the worker sets idle_in_transaction_session_timeout)."""
    if not database_url.startswith("sqlite"):
        worker.signal(signal.SIGSTOP)
        return
    path = make_url(database_url).database
    assert path is not None
    for _ in range(100):
        worker.signal(signal.SIGSTOP)
        probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen mid-transaction: let it finish, try again
            worker.signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    pytest.fail("could not freeze the worker between two transactions")


def test_a_job_whose_worker_is_killed_resumes_from_its_checkpoint(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    victim = make_job("victim", training=SLOW_TRAINING)
    doomed = start_worker(lease_seconds=2.0, heartbeat_seconds=0.5)
    wait_for(lambda: job_state(victim).epoch >= 2, timeout=60, what="epoch 2")
    doomed.signal(signal.SIGKILL)
    doomed.process.join(10)
    killed_after = job_state(victim).epoch
    reference = make_job("reference", training=SLOW_TRAINING)

    rescuer = start_worker()
    job = wait_for(finished(job_state, victim), timeout=90, what="the victim to finish")
    wait_for(finished(job_state, reference), timeout=90, what="the reference to finish")

    assert (job.status, job.attempts) == ("succeeded", 2), rescuer.logs()
    assert 2 <= killed_after == attempt_boundary(sessions, victim) < EPOCHS
    claims = claims_of(sessions, victim)
    assert [c.outcome for c in claims] == ["lease_expired", "succeeded"]
    assert_no_overlapping_claims(claims)
    assert_same_training(sessions, victim, reference, epochs=EPOCHS)
    # It resumed from its checkpoint (above); ended, neither job keeps one.
    assert checkpoints_of(sessions, victim) == checkpoints_of(sessions, reference) == 0


def test_a_stalled_worker_is_fenced_out_after_another_takes_over(
    database_url: str,
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    short_lease = {"lease_seconds": 2.0, "heartbeat_seconds": 0.5}
    victim = make_job("victim", training=SLOW_TRAINING)
    stalled = start_worker(**short_lease)
    wait_for(lambda: job_state(victim).epoch >= 2, timeout=60, what="epoch 2")
    freeze_between_transactions(stalled, database_url)  # its training process runs on

    rescuer = start_worker(**short_lease)
    wait_for(
        lambda: any(m.lease_token == 2 for m in metrics_of(sessions, victim)),
        timeout=60,
        what="the second worker to take over and write an epoch",
    )
    stalled.signal(signal.SIGCONT)
    stalled.process.join(30)

    assert stalled.process.exitcode == EXIT_LEASE_LOST, stalled.logs()
    assert "refused" in stalled.logs()
    job = wait_for(finished(job_state, victim), timeout=90, what="the victim to finish")
    assert (job.status, job.attempts) == ("succeeded", 2), rescuer.logs()
    boundary = attempt_boundary(sessions, victim)  # no epoch of the stalled worker after it
    assert 2 <= boundary < EPOCHS
    claims = claims_of(sessions, victim)
    assert [c.outcome for c in claims] == ["lease_expired", "succeeded"]
    assert_no_overlapping_claims(claims)
    reference = make_job("reference", training=SLOW_TRAINING)
    wait_for(finished(job_state, reference), timeout=90, what="the reference to finish")
    assert_same_training(sessions, victim, reference, epochs=EPOCHS)


@postgres_only
@pytest.mark.postgres
def test_four_workers_drain_many_jobs_each_exactly_once(
    start_worker: StartWorker,
    make_job: MakeJob,
    sessions: sessionmaker[Session],
) -> None:
    jobs = 100
    with sessions.begin() as session:
        few_rows = iris_dataset_row(rows=150)
        session.add(few_rows)
        session.flush()
        dataset_id = few_rows.id
    training = iris_training(epochs=1, batch_size="full")
    ids = {make_job(f"tiny {i}", training=training, dataset_id=dataset_id) for i in range(jobs)}
    started = time.monotonic()
    workers = [start_worker(lease_seconds=10.0, heartbeat_seconds=1.0) for _ in range(4)]

    def done() -> bool:
        with sessions() as session:
            open_jobs = session.scalar(
                select(func.count()).where(Job.status.in_(("queued", "running")))
            )
            return open_jobs == 0

    wait_for(done, timeout=120, what="the queue to drain")
    elapsed = time.monotonic() - started

    with sessions() as session:
        statuses = dict(session.execute(select(Job.id, Job.status)).all())
        attempts = set(session.scalars(select(Job.attempts)))
        models = list(session.scalars(select(Model.job_id)))
        claims = list(session.scalars(select(JobClaim).order_by(JobClaim.job_id, JobClaim.id)))
        metric_rows = session.scalar(select(func.count()).select_from(JobMetric))
    assert set(statuses) == ids and set(statuses.values()) == {"succeeded"}
    assert attempts == {1}
    assert sorted(models) == sorted(ids)  # one model per job, none twice
    assert metric_rows == jobs
    assert sorted(c.job_id for c in claims) == sorted(ids)  # each job claimed exactly once
    assert {c.outcome for c in claims} == {"succeeded"}
    for job_id in ids:
        assert_no_overlapping_claims([c for c in claims if c.job_id == job_id])
    busy = {c.worker for c in claims}
    assert len(busy) >= 2, busy  # the work was shared, not serialized behind one worker
    print(f"{jobs} jobs drained by {len(busy)} workers in {elapsed:.1f}s")
    assert all(w.process.is_alive() for w in workers)


@postgres_only
@pytest.mark.postgres
def test_an_idle_worker_is_woken_by_notify_not_by_polling(
    start_worker: StartWorker, make_job: MakeJob, job_state: JobState
) -> None:
    worker = start_worker(poll_seconds=60.0)  # polling alone would take a minute
    wait_for(lambda: "listening for" in worker.logs(), timeout=60, what="the worker to LISTEN")
    job_id = make_job("wake up")

    wait_for(lambda: job_state(job_id).status != "queued", timeout=20, what="the NOTIFY wake-up")


@contextmanager
def live_api(database_url: str) -> Iterator[httpx.Client]:
    """create_app() served by uvicorn on a free loopback port, in a thread of this process
    (torch is imported already), with an HTTP client on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    app = create_app(Settings(database_url=database_url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="uvicorn to start")
        # A hung request fails the test instead of passing for a slow 503.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(15)


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"] == "unavailable", body
    assert "database" in body["detail"], body


@pytest.mark.parametrize("database_url", ["throwaway_postgres"], indirect=True)
@pytest.mark.postgres
@pytest.mark.slow
def test_a_job_and_the_api_survive_postgres_going_down(
    throwaway_postgres: ThrowawayPostgres,
    database_url: str,
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    """Stops and starts a Postgres server of the test's own (never the shared one).
    While it is down the API answers 503 (no 500, no hang); once it is back the same API process
    answers 200 again (pool_pre_ping replaces the connections the stop cut) and the worker,
    whose writes retried meanwhile, finishes the job in its first attempt."""
    epochs = 40
    job_id = make_job("through a restart", training=iris_training(epochs=epochs, batch_size=5))
    worker = start_worker(lease_seconds=20.0, heartbeat_seconds=1.0)
    with live_api(database_url) as api:
        assert api.get(f"/v1/jobs/{job_id}").status_code == 200
        wait_for(lambda: job_state(job_id).epoch >= 2, timeout=60, what="epoch 2")

        throwaway_postgres.stop()
        try:
            job_read = api.get(f"/v1/jobs/{job_id}")
            health = api.get("/health")
        finally:
            throwaway_postgres.start()

        assert_database_unavailable(job_read)
        assert "try again" in job_read.json()["detail"]
        assert job_read.headers["retry-after"] == "2"
        assert_database_unavailable(health)

        def api_answers() -> httpx.Response | None:
            response = api.get(f"/v1/jobs/{job_id}")
            return response if response.status_code == 200 else None

        # The first requests after the start may still meet a server that is coming up (503).
        recovered = wait_for(api_answers, timeout=60, what="the API to answer 200 again")
        assert recovered.json()["id"] == job_id
        assert api.get("/health").json()["status"] == "ok"

    def finished_job() -> Job | None:
        try:
            return finished(job_state, job_id)()
        except sa_exc.OperationalError:  # the server is still coming back
            return None

    # The test's own pool held connections the restart cut: pre-ping replaces them.
    job = wait_for(finished_job, timeout=120, what="the job to finish")
    assert (job.status, job.attempts) == ("succeeded", 1), worker.logs()
    assert [m.epoch for m in metrics_of(sessions, job_id)] == list(range(1, epochs + 1))
    assert "retrying" in worker.logs() or "unavailable" in worker.logs()
    with sessions() as session:
        assert session.execute(text("SELECT 1")).scalar_one() == 1
