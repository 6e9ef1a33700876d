"""Fair share between API keys: a key gets at most `max_running_jobs_per_key` jobs on workers,
and claims take the key with the fewest running jobs first. Before, claims were first-in
first-out: two 100,000-epoch jobs of one key kept another key's 1-epoch job queued for hours.
On SQLite and on Postgres (where claims race with FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import threading
import uuid

from queue_kit import IRIS_NETWORK, StartWorker, checkpoints_of, iris_training, wait_for
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth import create_key
from app.queue import store
from app.queue.clock import db_now
from app.tables import Job


def _key(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        key, _ = create_key(session, name=f"k-{uuid.uuid4().hex[:8]}")
        return key.id


def _enqueue(
    sessions: sessionmaker[Session], iris_id: str, owner: str | None, epochs: int = 1
) -> str:
    training = iris_training(epochs=epochs)
    with sessions.begin() as session:
        job = Job(
            owner_id=owner,
            dataset_id=iris_id,
            network=IRIS_NETWORK,
            training=training,
            epochs=epochs,
            max_attempts=3,
        )
        return store.enqueue_job(session, job=job).id


def _claim(sessions: sessionmaker[Session], cap: int) -> store.Claim | None:
    with sessions.begin() as session:
        return store.claim_next_job(session, worker="w", lease_seconds=60, max_running_per_key=cap)


def test_fewest_running_first_and_a_cap_per_key(
    sessions: sessionmaker[Session], iris_id: str
) -> None:
    a, b, c = _key(sessions), _key(sessions), _key(sessions)
    a_jobs = [_enqueue(sessions, iris_id, a) for _ in range(4)]  # first in
    b_job, c_job = _enqueue(sessions, iris_id, b), _enqueue(sessions, iris_id, c)
    owners = []
    for _ in range(4):
        claim = _claim(sessions, cap=2)
        assert claim is not None
        owners.append(claim.owner_id)
    # FIFO would have given a, a, a, a; fair share alternates, oldest first among equals.
    assert owners == [a, b, c, a]
    assert _claim(sessions, cap=2) is None  # a holds 2 (its cap); b and c have nothing queued
    assert _claim(sessions, cap=3) is not None  # a higher cap lets a have a third
    with sessions() as session:
        statuses = {row.id: row.status for row in session.execute(select(Job.id, Job.status))}
    assert [statuses[j] for j in a_jobs].count("running") == 3
    assert statuses[b_job] == statuses[c_job] == "running"


def test_keyless_jobs_are_not_capped(sessions: sessionmaker[Session], iris_id: str) -> None:
    for _ in range(3):
        _enqueue(sessions, iris_id, None)
    assert all(_claim(sessions, cap=1) is not None for _ in range(3))


def test_a_key_at_its_cap_has_its_lost_job_taken_over(
    sessions: sessionmaker[Session], iris_id: str
) -> None:
    """A job whose lease ran out is still `running`: it counts in its key's share for the key's
    other jobs, but not against itself, so another worker takes it over with the key at its
    cap, while the key's queued job waits."""
    a = _key(sessions)
    jobs = {_enqueue(sessions, iris_id, a) for _ in range(3)}
    held = _claim(sessions, cap=2)
    with sessions.begin() as session:  # a worker that vanishes at once
        lost = store.claim_next_job(session, worker="lost", lease_seconds=-1, max_running_per_key=2)
    assert held is not None and lost is not None
    taken = _claim(sessions, cap=2)
    assert taken is not None and (taken.job_id, taken.lease_token) == (lost.job_id, 2)
    assert _claim(sessions, cap=2) is None  # two running: the third waits
    with sessions() as session:
        waiting = jobs - {lost.job_id, held.job_id}
        assert session.scalar(select(Job.status).where(Job.id.in_(waiting))) == "queued"


def test_a_job_backing_off_holds_no_place_in_its_keys_share(
    sessions: sessionmaker[Session], iris_id: str
) -> None:
    """An older job of the key waiting out a retry backoff isn't claimable: it doesn't count
    ahead of the key's newer job, which runs under a cap of one."""
    a = _key(sessions)
    older = _enqueue(sessions, iris_id, a)
    first = _claim(sessions, cap=1)
    assert first is not None and first.job_id == older
    with sessions.begin() as session:
        store.retry_job(
            session,
            job_id=older,
            lease_token=first.lease_token,
            error="the training process died",
            error_code="worker_lost",
            backoff_seconds=60,
        )
        # Older by a minute, so a share counting it would hold the newer job back.
        session.execute(update(Job).where(Job.id == older).values(created_at=db_now(-60)))
    newer = _enqueue(sessions, iris_id, a)
    claim = _claim(sessions, cap=1)
    assert claim is not None and claim.job_id == newer
    assert _claim(sessions, cap=1) is None  # the key holds one; the older one is backing off


def test_concurrent_claims_respect_fair_order(
    sessions: sessionmaker[Session], iris_id: str
) -> None:
    """Four claimers at once (threads, each its own connection): every job claimed once, and no
    key gets a second job before each key with work has one."""
    keys = [_key(sessions) for _ in range(4)]
    for key in keys:
        for _ in range(3):
            _enqueue(sessions, iris_id, key)
    claims: list[store.Claim] = []
    lock = threading.Lock()

    def claimer() -> None:
        claim = _claim(sessions, cap=2)
        assert claim is not None
        with lock:
            claims.append(claim)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({c.job_id for c in claims}) == 4
    assert sorted(c.owner_id or "" for c in claims) == sorted(keys)


def test_one_key_cannot_hold_every_worker(
    sessions: sessionmaker[Session], iris_id: str, start_worker: StartWorker
) -> None:
    """Three real workers; key A queues three long jobs first, key B one short job after them:
    B's job runs and succeeds while A's third waits, and A never has more than two running."""
    a, b = _key(sessions), _key(sessions)
    long_jobs = [_enqueue(sessions, iris_id, a, epochs=100_000) for _ in range(3)]
    short = _enqueue(sessions, iris_id, b, epochs=1)
    workers = [start_worker(max_running_jobs_per_key=2) for _ in range(3)]

    def states() -> dict[str, str]:
        with sessions() as session:
            return {row.id: row.status for row in session.execute(select(Job.id, Job.status))}

    seen_running: list[int] = []

    def short_done() -> bool:
        now = states()
        seen_running.append(sum(now[j] == "running" for j in long_jobs))
        return now[short] == "succeeded"

    try:
        wait_for(short_done, timeout=120, what="key B's job to succeed beside key A's long jobs")
        assert max(seen_running) <= 2, seen_running
        assert states()[long_jobs[2]] in ("queued", "running")
    finally:
        live = [j for j, status in states().items() if status in ("queued", "running")]
        with sessions.begin() as session:
            for job_id in live:
                store.cancel_job(session, job_id=job_id)
        for worker in workers:
            worker.stop()


def test_a_job_past_the_time_limit_is_stopped_and_fails(
    sessions: sessionmaker[Session], iris_id: str, start_worker: StartWorker
) -> None:
    """A 100,000-epoch job (hours) on a worker with a 2 s limit: stopped at a batch, `failed`
    with error_code time_limit and a message naming the setting, its metrics so far kept."""
    job_id = _enqueue(sessions, iris_id, _key(sessions), epochs=100_000)
    worker = start_worker(max_job_seconds=2.0)

    def ended() -> Job | None:
        with sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job if job.finished_at is not None else None

    try:
        job = wait_for(ended, timeout=60, what="the time limit to stop the job")
    finally:
        worker.stop()
    assert (job.status, job.error_code) == ("failed", "time_limit"), job.error
    assert "FITSERVE_MAX_JOB_SECONDS" in (job.error or "")
    assert 0 < job.epoch < 100_000
    assert checkpoints_of(sessions, job_id) == 0  # metrics kept, checkpoint deleted
