"""The queue's statements on SQLite and Postgres: claim, lease, fencing, retry, release, cancel."""

from __future__ import annotations

import threading

import pytest
from queue_kit import MakeJob
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine
from app.queue import store
from app.queue.clock import db_now
from app.tables import Job, JobCheckpoint, JobClaim, JobMetric, Model, new_id

LEASE = 30.0


def claim(sessions: sessionmaker[Session], worker: str = "w1", lease: float = LEASE):
    with sessions.begin() as session:
        return store.claim_next_job(session, worker=worker, lease_seconds=lease)


def job_row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def claims_of(sessions: sessionmaker[Session], job_id: str) -> list[JobClaim]:
    with sessions() as session:
        return list(
            session.scalars(
                select(JobClaim).where(JobClaim.job_id == job_id).order_by(JobClaim.lease_token)
            )
        )


def test_claim_takes_the_oldest_job_and_sets_a_lease_from_the_database_clock(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    first, second = make_job("first"), make_job("second")

    claimed = claim(sessions, "worker-a")

    assert claimed is not None and claimed.job_id == first
    assert (claimed.lease_token, claimed.attempts, claimed.epoch) == (1, 1, 0)
    assert claimed.network["layers"][0]["units"] == 8
    with sessions() as session:
        job = session.get(Job, first)
        assert job is not None
        assert (job.status, job.claimed_by) == ("running", "worker-a")
        assert job.started_at is not None and job.lease_expires_at is not None
        # Lease set on the database's clock: about LEASE seconds after its now().
        ahead = session.scalar(
            select(func.count()).where(
                Job.id == first,
                Job.lease_expires_at > db_now(LEASE - 5),
                Job.lease_expires_at < db_now(LEASE + 5),
            )
        )
        assert ahead == 1
    assert [(c.worker, c.lease_token, c.ended_at) for c in claims_of(sessions, first)] == [
        ("worker-a", 1, None)
    ]
    assert claim(sessions).job_id == second  # type: ignore[union-attr]
    assert claim(sessions) is None  # both leases are live


def test_two_connections_racing_for_one_job_exactly_one_wins(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job()
    results: list[object] = []

    # A claims inside an open transaction; B claims while A's transaction is still open (Postgres:
    # B skips A's locked row; SQLite: B waits for A's write lock); then A commits.
    session_a = sessions()
    session_a.begin()
    won_a = store.claim_next_job(session_a, worker="a", lease_seconds=LEASE)
    racer = threading.Thread(target=lambda: results.append(claim(sessions, "b")))
    racer.start()
    racer.join(timeout=0.3)
    session_a.commit()
    session_a.close()
    racer.join(timeout=30)

    assert won_a is not None and won_a.job_id == job_id
    assert results == [None]
    assert [c.worker for c in claims_of(sessions, job_id)] == ["a"]


def test_expired_lease_is_reclaimed_and_the_old_token_is_fenced_out(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job()
    old = claim(sessions, "stalled", lease=-1.0)  # a lease that has already run out
    assert old is not None

    new = claim(sessions, "rescuer")

    assert new is not None and new.job_id == job_id
    assert (new.lease_token, new.attempts) == (2, 2)
    with sessions.begin() as session, pytest.raises(store.LeaseLost):
        store.heartbeat(session, job_id=job_id, lease_token=old.lease_token, lease_seconds=LEASE)
    with sessions.begin() as session, pytest.raises(store.LeaseLost):
        store.record_epoch(
            session,
            job_id=job_id,
            lease_token=old.lease_token,
            epoch=1,
            values={"loss": 1.0},
            checkpoint=b"stale",
            lease_seconds=LEASE,
        )
    with sessions.begin() as session, pytest.raises(store.LeaseLost):
        store.fail_job(
            session, job_id=job_id, lease_token=old.lease_token, error="x", error_code="x"
        )
    with sessions.begin() as session:
        assert (
            store.heartbeat(session, job_id=job_id, lease_token=new.lease_token, lease_seconds=1)
            == "running"
        )
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(JobMetric)) == 0
        assert session.get(JobCheckpoint, job_id) is None
    audit = claims_of(sessions, job_id)
    assert [(c.worker, c.outcome) for c in audit] == [
        ("stalled", "lease_expired"),
        ("rescuer", None),
    ]
    assert audit[0].ended_at is not None and audit[0].ended_at <= audit[1].claimed_at


def test_record_epoch_writes_metrics_checkpoint_and_progress_together(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job()
    claimed = claim(sessions)
    assert claimed is not None
    for epoch in (1, 2):
        with sessions.begin() as session:
            store.record_epoch(
                session,
                job_id=job_id,
                lease_token=claimed.lease_token,
                epoch=epoch,
                values={"epoch": epoch, "loss": 1.0 / epoch},
                checkpoint=f"checkpoint {epoch}".encode(),
                lease_seconds=LEASE,
            )

    with sessions() as session:
        metrics = session.scalars(select(JobMetric).order_by(JobMetric.epoch)).all()
        assert [(m.epoch, m.loss, m.values["loss"]) for m in metrics] == [
            (1, 1.0, 1.0),
            (2, 0.5, 0.5),
        ]
        assert store.load_checkpoint(session, job_id=job_id) == (2, b"checkpoint 2")
        assert session.get(Job, job_id).epoch == 2  # type: ignore[union-attr]


def test_finish_stores_the_model_and_succeeds_in_one_transaction(
    sessions: sessionmaker[Session], make_job: MakeJob, iris_id: str
) -> None:
    job_id = make_job()
    claimed = claim(sessions)
    assert claimed is not None

    with sessions.begin() as session:
        model = Model(
            dataset_id=iris_id,
            network=claimed.network,
            training=claimed.training,
            task="classification",
            classes=["a", "b", "c"],
            metrics={"loss": 0.1},
            weights=b"weights",
        )
        store.finish_job(session, job_id=job_id, lease_token=claimed.lease_token, model=model)

    job = job_row(sessions, job_id)
    assert job.status == "succeeded" and job.finished_at is not None
    with sessions() as session:
        stored = session.get(Model, job.model_id)
        assert stored is not None and stored.job_id == job_id and stored.weights == b"weights"
    assert [c.outcome for c in claims_of(sessions, job_id)] == ["succeeded"]
    # A second finish (a duplicate execution) is refused rather than storing a second model.
    with sessions.begin() as session, pytest.raises(store.LeaseLost):
        store.finish_job(
            session,
            job_id=job_id,
            lease_token=claimed.lease_token,
            model=Model(
                dataset_id=iris_id,
                network={},
                training={},
                task="classification",
                weights=b"",
            ),
        )


def test_crashed_attempts_back_off_then_end_failed_worker_lost(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job(max_attempts=2)
    first = claim(sessions)
    assert first is not None
    with sessions.begin() as session:
        status = store.retry_job(
            session,
            job_id=job_id,
            lease_token=first.lease_token,
            error="the training process died",
            error_code="worker_lost",
            backoff_seconds=60,
        )
    assert status == "queued"
    assert claim(sessions) is None  # backing off
    with sessions.begin() as session:  # let the backoff pass
        session.execute(update(Job).where(Job.id == job_id).values(available_at=db_now(-1)))
    second = claim(sessions)
    assert second is not None and second.attempts == 2

    with sessions.begin() as session:
        status = store.retry_job(
            session,
            job_id=job_id,
            lease_token=second.lease_token,
            error="the training process died",
            error_code="worker_lost",
            backoff_seconds=0,
        )

    assert status == "failed"
    job = job_row(sessions, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)
    assert job.finished_at is not None and "died" in (job.error or "")
    assert claim(sessions) is None


def test_a_job_whose_workers_keep_vanishing_is_reaped_as_worker_lost(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job(max_attempts=2)
    for _ in range(2):
        assert claim(sessions, lease=-1.0) is not None  # each worker vanishes at once
    with sessions.begin() as session:
        assert store.reap_expired_jobs(session) == 1
        assert store.claim_next_job(session, worker="w", lease_seconds=LEASE) is None

    job = job_row(sessions, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)
    assert "worker" in (job.error or "")


def test_release_hands_the_job_back_without_an_attempt_penalty(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job()
    claimed = claim(sessions)
    assert claimed is not None
    with sessions.begin() as session:
        store.record_epoch(
            session,
            job_id=job_id,
            lease_token=claimed.lease_token,
            epoch=1,
            values={"loss": 1.0},
            checkpoint=b"epoch 1",
            lease_seconds=LEASE,
        )
        assert store.release_job(session, job_id=job_id, lease_token=claimed.lease_token) == (
            "queued"
        )

    again = claim(sessions, "w2")
    assert again is not None and again.job_id == job_id
    assert (again.attempts, again.lease_token, again.epoch) == (1, 2, 1)
    with sessions() as session:
        assert store.load_checkpoint(session, job_id=job_id) == (1, b"epoch 1")
    assert [c.outcome for c in claims_of(sessions, job_id)] == ["released", None]


def test_cancel_queued_running_and_finished_jobs(
    sessions: sessionmaker[Session], make_job: MakeJob, iris_id: str
) -> None:
    queued, running, done = make_job("queued"), make_job("running"), make_job("done")
    with sessions.begin() as session:  # claim `running` and `done` (oldest first)
        session.execute(update(Job).where(Job.id == queued).values(available_at=db_now(3600)))
    claimed_running, claimed_done = claim(sessions), claim(sessions)
    assert claimed_running and claimed_done and claimed_running.job_id == running
    with sessions.begin() as session:
        store.fail_job(
            session, job_id=done, lease_token=claimed_done.lease_token, error="e", error_code="e"
        )

    with sessions.begin() as session:
        assert store.cancel_job(session, job_id=queued).status == "cancelled"
        assert store.cancel_job(session, job_id=running).status == "cancelling"
    with sessions.begin() as session:
        assert store.cancel_job(session, job_id=queued).status == "cancelled"  # idempotent
        with pytest.raises(store.JobConflict, match="already failed"):
            store.cancel_job(session, job_id=done)
        with pytest.raises(store.JobNotFound):
            store.cancel_job(session, job_id="0" * 32)

    assert job_row(sessions, queued).finished_at is not None
    token = claimed_running.lease_token
    with sessions.begin() as session:
        # The worker hears of the cancel through its heartbeat ...
        assert store.heartbeat(session, job_id=running, lease_token=token, lease_seconds=5) == (
            "cancelling"
        )
    with sessions.begin() as session, pytest.raises(store.LeaseLost):
        # ... may not turn it into a success ...
        store.finish_job(
            session,
            job_id=running,
            lease_token=token,
            model=Model(
                dataset_id=iris_id, network={}, training={}, task="classification", weights=b""
            ),
        )
    with sessions.begin() as session:
        # ... and ends it cancelled.
        store.finish_cancelled(session, job_id=running, lease_token=token)
    job = job_row(sessions, running)
    assert job.status == "cancelled" and job.finished_at is not None and job.model_id is None


def test_a_cancelling_job_whose_worker_vanished_ends_cancelled(
    sessions: sessionmaker[Session], make_job: MakeJob
) -> None:
    job_id = make_job()
    assert claim(sessions, lease=-1.0) is not None
    with sessions.begin() as session:
        store.cancel_job(session, job_id=job_id)
    assert claim(sessions) is None  # the reaper isn't part of the claim itself ...
    with sessions.begin() as session:
        assert store.reap_expired_jobs(session) == 1
    assert job_row(sessions, job_id).status == "cancelled"  # ... it runs beside it


def test_cancel_racing_a_claim_never_ends_in_success_after_an_accepted_cancel(
    database_url: str, iris_id: str
) -> None:
    # What is raced is atomicity, not durability: Postgres may skip the per-commit fsync here.
    options = {"options": "-c synchronous_commit=off"} if "postgresql" in database_url else {}
    engine = (
        make_engine(database_url, connect_args=options) if options else make_engine(database_url)
    )
    iterations = 1000
    start = threading.Barrier(2, timeout=30)
    job_ids: list[str] = []
    cancelled_as: list[str] = []
    # One connection per side for the whole race: 1,000 iterations of pool checkouts (and
    # Postgres pre-pings) would cost more than the race itself.
    worker_side = Session(bind=engine.connect(), expire_on_commit=False)
    cancel_side = Session(bind=engine.connect(), expire_on_commit=False)

    def canceller() -> None:
        for i in range(iterations):
            start.wait()
            try:
                with cancel_side.begin():
                    status = store.cancel_job(cancel_side, job_id=job_ids[i]).status
                cancelled_as.append(status)
            except store.JobConflict as exc:  # the claim and the finish both came first
                cancelled_as.append(f"refused: {exc.status}")

    racer = threading.Thread(target=canceller)
    racer.start()
    claimed_jobs: list[str | None] = []
    for _ in range(iterations):
        job_id = new_id()
        with worker_side.begin():
            worker_side.execute(
                insert(Job).values(id=job_id, dataset_id=iris_id, network={}, training={}, epochs=1)
            )
        job_ids.append(job_id)
        start.wait()
        with worker_side.begin():
            claimed = store.claim_next_job(worker_side, worker="w", lease_seconds=LEASE)
        claimed_jobs.append(claimed.job_id if claimed else None)
        if claimed is None:
            continue
        with worker_side.begin():  # the worker tries to finish what it claimed
            try:
                store.finish_job(
                    worker_side,
                    job_id=claimed.job_id,
                    lease_token=claimed.lease_token,
                    model=Model(
                        dataset_id=iris_id,
                        network={},
                        training={},
                        task="classification",
                        weights=b"",
                    ),
                )
            except store.LeaseLost:  # the cancel came first: it must end cancelled
                store.finish_cancelled(
                    worker_side, job_id=claimed.job_id, lease_token=claimed.lease_token
                )
    racer.join()
    for side in (worker_side, cancel_side):
        side.close()
        side.bind.close()  # type: ignore[union-attr]

    with Session(engine) as session:
        final = {row.id: row.status for row in session.execute(select(Job.id, Job.status))}
    engine.dispose()
    accepted_while_queued = 0
    for job_id, cancel_status, claimed_id in zip(job_ids, cancelled_as, claimed_jobs, strict=True):
        if cancel_status == "cancelled":  # accepted while queued: no worker may have it
            accepted_while_queued += 1
            assert claimed_id is None and final[job_id] == "cancelled"
        elif cancel_status == "cancelling":  # the claim came first, then the cancel: no success
            assert claimed_id == job_id and final[job_id] == "cancelled"
        else:  # claim and finish both came first
            assert cancel_status == "refused: succeeded"
            assert claimed_id == job_id and final[job_id] == "succeeded"
    print(f"cancel accepted while queued in {accepted_while_queued} of {iterations} races")
