"""A job's own time budget (training.max_seconds), beside its epochs and under the server's
FITSERVE_MAX_JOB_SECONDS: past it the job is stopped at a batch and ends failed with
error_code time_limit and a message naming the budget, its metrics kept and its checkpoint gone.
The budget is the job's, not each attempt's: a job retried after its worker died has what its
earlier attempts left. On SQLite and Postgres, with a real worker."""

from __future__ import annotations

import signal
import time

import pytest
from queue_kit import (
    JobState,
    MakeJob,
    StartWorker,
    checkpoints_of,
    claims_of,
    finished,
    iris_training,
    metrics_of,
    wait_for,
)
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.queue import store
from app.queue.clock import db_now
from app.queue.parent import time_limit
from app.tables import Job

LEASE = 30.0


def test_a_job_past_its_own_budget_is_stopped_and_fails_naming_it(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    # 100,000 epochs of iris take hours; the budget is 2 s, the server's limit its 6 h default.
    job_id = make_job("budgeted", training=iris_training(epochs=100_000, max_seconds=2.0))
    worker = start_worker()

    job = wait_for(finished(job_state, job_id), timeout=60, what="the budget to stop the job")

    assert (job.status, job.error_code) == ("failed", "time_limit"), (job.error, worker.logs())
    message = job.error or ""
    assert "own time budget of 2 s" in message and "training.max_seconds" in message, message
    kept = metrics_of(sessions, job_id)
    assert 0 < len(kept) == job.epoch < 100_000
    assert [m.epoch for m in kept] == list(range(1, len(kept) + 1))
    assert checkpoints_of(sessions, job_id) == 0
    assert job.model_id is None


def test_the_tighter_of_the_job_budget_and_the_server_limit_applies() -> None:
    assert time_limit({"max_seconds": 60}, 3600.0)[0] == 60.0
    assert "training.max_seconds" in time_limit({"max_seconds": 60}, None)[1]
    limit, error = time_limit({}, 3600.0)
    assert limit == 3600.0 and "FITSERVE_MAX_JOB_SECONDS" in error
    assert time_limit({}, None)[0] is None


def _claim(sessions: sessionmaker[Session], worker: str, lease: float = LEASE) -> store.Claim:
    with sessions.begin() as session:
        claim = store.claim_next_job(session, worker=worker, lease_seconds=lease)
    assert claim is not None
    return claim


def _heartbeat(
    sessions: sessionmaker[Session], claim: store.Claim, limit: float | None = None
) -> str:
    with sessions.begin() as session:
        return store.heartbeat(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            lease_seconds=LEASE,
            max_job_seconds=limit,
        )


@pytest.mark.parametrize("ended", ["crashed", "lease lost"])
def test_a_second_attempt_has_only_what_the_first_left_of_the_limit(
    ended: str, make_job: MakeJob, job_state: JobState, sessions: sessionmaker[Session]
) -> None:
    """The first attempt runs 1.2 s (its time counted at its heartbeat), then its training process
    dies (retry_job) or its worker does (the lease runs out, another worker takes the job over).
    Under a limit of 1 s the second attempt is stopped at its first heartbeat, which comes at
    once: the 1 s it would have had to itself under a per-attempt limit is gone."""
    job_id = make_job("twice")
    first = _claim(sessions, "first")
    time.sleep(1.2)
    assert _heartbeat(sessions, first) == "running"
    spent = job_state(job_id).run_seconds
    assert spent >= 1.2
    if ended == "crashed":
        with sessions.begin() as session:
            status = store.retry_job(
                session,
                job_id=job_id,
                lease_token=first.lease_token,
                error="killed",
                error_code="worker_lost",
                backoff_seconds=0.0,
            )
        assert status == "queued"
    else:  # its worker is gone: the lease runs out
        with sessions.begin() as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(lease_expires_at=db_now(-1.0))
            )
    time.sleep(1.0)  # waiting in the queue is not running: it is not counted

    second = _claim(sessions, "second")
    assert (second.job_id, second.attempts) == (job_id, 2)
    assert _heartbeat(sessions, second) == "running"  # no limit: only counted
    job = job_state(job_id)
    assert spent <= job.run_seconds < spent + 1.0, (spent, job.run_seconds)

    assert _heartbeat(sessions, second, limit=1.0) == "cancelling"
    job = job_state(job_id)
    assert job.error_code == "time_limit"
    assert "1 s (FITSERVE_MAX_JOB_SECONDS), its attempts together" in (job.error or "")


def test_a_job_whose_worker_is_killed_resumes_with_the_rest_of_its_budget(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    """A real worker SIGKILLed after 4 of the job's 6 s: the worker that takes the job over
    stops it after the 2 s left (and the time a stop takes), not after another 6."""
    budget = 6.0
    job_id = make_job("resumed", training=iris_training(epochs=100_000, max_seconds=budget))
    doomed = start_worker(lease_seconds=2.0, heartbeat_seconds=0.5)
    wait_for(
        lambda: job_state(job_id).run_seconds >= 4.0, timeout=60, what="4 s of the job's budget"
    )
    doomed.signal(signal.SIGKILL)
    doomed.process.join(10)
    spent = job_state(job_id).run_seconds
    assert spent < budget, doomed.logs()

    rescuer = start_worker()
    job = wait_for(finished(job_state, job_id), timeout=60, what="the budget to stop the job")

    assert (job.status, job.error_code, job.attempts) == ("failed", "time_limit", 2), (
        job.error,
        rescuer.logs(),
    )
    assert "own time budget of 6 s (training.max_seconds), its attempts together" in (
        job.error or ""
    )
    claims = claims_of(sessions, job_id)
    assert [c.outcome for c in claims] == ["lease_expired", "cancelled"]
    second = claims[1]
    assert second.ended_at is not None
    ran = (second.ended_at - second.claimed_at).total_seconds()
    # a per-attempt budget would have given it all 6 s again
    assert ran < budget, (spent, ran)
    assert job.run_seconds >= budget
    # it resumed from the first attempt's checkpoint: no epoch trained twice, none missing
    kept = metrics_of(sessions, job_id)
    assert [m.epoch for m in kept] == list(range(1, job.epoch + 1))
    assert {m.lease_token for m in kept} == {1, 2}
