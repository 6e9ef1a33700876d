"""A job's checkpoint (weights + optimizer state: 571 MiB for a 50 M-parameter network) lives only
while the job can still resume: every way a job ends deletes it in the same transaction, on
SQLite and Postgres. Before, every finished job kept its last checkpoint for ever.

The statements are driven one by one here; tests/queue/test_worker_checkpoints.py runs real
workers to each end (succeeded, failed, cancelled, time-limited) and through a resume.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from queue_kit import MakeJob
from queue_kit import checkpoints_of as _checkpoints
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.auth import create_key
from app.queue import store
from app.queue.clock import db_now
from app.tables import Job, JobMetric, Model

LEASE = 30.0
Claimed = store.Claim


def _claim(sessions: sessionmaker[Session], lease: float = LEASE) -> Claimed:
    with sessions.begin() as session:
        claim = store.claim_next_job(session, worker="w", lease_seconds=lease)
    assert claim is not None
    return claim


def _record(sessions: sessionmaker[Session], claim: Claimed, epoch: int = 1) -> None:
    with sessions.begin() as session:
        store.record_epoch(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            epoch=epoch,
            values={"epoch": epoch, "loss": 1.0},
            checkpoint=b"weights and optimizer state" * 1000,
            lease_seconds=LEASE,
        )


def _metrics(sessions: sessionmaker[Session], job_id: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job_id)
            )
            or 0
        )


def _status(sessions: sessionmaker[Session], job_id: str) -> str:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return str(job.status)


def _model(claim: Claimed, dataset_id: str) -> Model:
    return Model(
        dataset_id=dataset_id,
        network=claim.network,
        training=claim.training,
        task="classification",
        classes=["a", "b", "c"],
        weights=b"final weights",
    )


def _cancel(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        store.cancel_job(session, job_id=job_id)


Ending = Callable[[sessionmaker[Session], Claimed, str], None]


def _succeed(sessions: sessionmaker[Session], claim: Claimed, dataset_id: str) -> None:
    with sessions.begin() as session:
        store.finish_job(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            model=_model(claim, dataset_id),
            last_epoch=(2, {"epoch": 2, "loss": 0.5}),
        )


def _fail(sessions: sessionmaker[Session], claim: Claimed, dataset_id: str) -> None:
    with sessions.begin() as session:
        store.fail_job(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            error="out of memory",
            error_code="out_of_memory",
        )


def _finish_cancelled(sessions: sessionmaker[Session], claim: Claimed, dataset_id: str) -> None:
    _cancel(sessions, claim.job_id)
    with sessions.begin() as session:
        store.finish_cancelled(session, job_id=claim.job_id, lease_token=claim.lease_token)


def _time_limited(sessions: sessionmaker[Session], claim: Claimed, dataset_id: str) -> None:
    with sessions.begin() as session:  # started more than 0 s ago: past a 0 s limit
        store.heartbeat(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            lease_seconds=LEASE,
            max_job_seconds=-1.0,
        )
    assert _status(sessions, claim.job_id) == "cancelling"
    with sessions.begin() as session:
        store.finish_cancelled(session, job_id=claim.job_id, lease_token=claim.lease_token)


def _retries_used_up(sessions: sessionmaker[Session], claim: Claimed, dataset_id: str) -> None:
    with sessions.begin() as session:
        store.retry_job(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            error="killed",
            error_code="worker_lost",
            backoff_seconds=0,
        )


def _released_while_cancelling(
    sessions: sessionmaker[Session], claim: Claimed, dataset_id: str
) -> None:
    _cancel(sessions, claim.job_id)
    with sessions.begin() as session:
        store.release_job(session, job_id=claim.job_id, lease_token=claim.lease_token)


def _reaped(sessions: sessionmaker[Session], claim: Claimed, dataset_id: str) -> None:
    _cancel(sessions, claim.job_id)  # its worker vanished while it was cancelling
    with sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == claim.job_id).values(lease_expires_at=db_now(-60))
        )
    with sessions.begin() as session:
        assert store.reap_expired_jobs(session) == 1


ENDINGS: dict[str, tuple[Ending, str]] = {
    "succeeded": (_succeed, "succeeded"),
    "failed": (_fail, "failed"),
    "cancelled": (_finish_cancelled, "cancelled"),
    "time-limited": (_time_limited, "failed"),
    "retries used up": (_retries_used_up, "failed"),
    "released while cancelling": (_released_while_cancelling, "cancelled"),
    "reaped": (_reaped, "cancelled"),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_the_statement_that_ends_a_job_deletes_its_checkpoint(
    ending: str, sessions: sessionmaker[Session], make_job: MakeJob, iris_id: str
) -> None:
    end, expected = ENDINGS[ending]
    job_id = make_job(max_attempts=1)
    claim = _claim(sessions)
    _record(sessions, claim)
    assert _checkpoints(sessions, job_id) == 1

    end(sessions, claim, iris_id)

    assert _status(sessions, job_id) == expected
    assert _checkpoints(sessions, job_id) == 0
    assert _metrics(sessions, job_id) >= 1  # the metrics so far are kept


def test_a_queued_job_keeps_its_checkpoint_until_it_ends(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    """Handed back (a crash with attempts left, a worker's shutdown), a job resumes from its
    checkpoint on the next claim; cancelled while queued, or stopped with its key, it can't."""
    retried, released, revoked = make_job(), make_job(), make_job()
    for job_id in (retried, released, revoked):
        claim = _claim(sessions)
        assert claim.job_id == job_id
        _record(sessions, claim)
        with sessions.begin() as session:
            if job_id == retried:
                store.retry_job(
                    session,
                    job_id=job_id,
                    lease_token=claim.lease_token,
                    error="killed",
                    error_code="worker_lost",
                    backoff_seconds=60,  # stays queued for the rest of the test
                )
            else:
                store.release_job(session, job_id=job_id, lease_token=claim.lease_token)
    assert [_status(sessions, j) for j in (retried, released, revoked)] == ["queued"] * 3
    assert [_checkpoints(sessions, j) for j in (retried, released, revoked)] == [1, 1, 1]
    with sessions.begin() as session:
        assert store.load_checkpoint(session, job_id=released) is not None

    _cancel(sessions, retried)
    with sessions.begin() as session:
        key, _ = create_key(session, name="revoked")
        session.execute(update(Job).where(Job.id == revoked).values(owner_id=key.id))
        key_id = key.id
    with sessions.begin() as session:
        stopped = store.stop_owner_jobs(
            session, owner_id=key_id, error="revoked", error_code="key_revoked"
        )
    assert stopped == [revoked]

    assert [_status(sessions, j) for j in (retried, revoked)] == ["cancelled", "cancelled"]
    assert [_checkpoints(sessions, j) for j in (retried, released, revoked)] == [0, 1, 0]
