"""A job's own time budget (training.max_seconds), beside its epochs and under the server's
FITSERVE_MAX_JOB_SECONDS: past it the job is stopped at a batch and ends failed with
error_code time_limit and a message naming the budget, its metrics kept and its checkpoint gone.
On SQLite and Postgres, with a real worker."""

from __future__ import annotations

from queue_kit import (
    JobState,
    MakeJob,
    StartWorker,
    checkpoints_of,
    finished,
    iris_training,
    metrics_of,
    wait_for,
)
from sqlalchemy.orm import Session, sessionmaker

from app.queue.parent import time_limit


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
