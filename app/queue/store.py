"""The queue's statements: the job row is the queue entry, so each state change is one statement.

Every function takes the session first and neither commits nor rolls back: the caller owns the
transaction (the API's request session, or the worker's `sessionmaker.begin()`).

Fencing: a claim bumps `lease_token`; every later write of that worker names the token it holds.
A fenced write that touches no row means the job was taken over (or finished, or cancelled): it
raises `LeaseLost` and the worker must stop at once and write nothing more.

Times come from the database's clock (`db_now`), never the worker's.

A job's status (JobStatus, app/job_status.py) changes only here, only these ways:

    from        to           by
    queued      running      claim_next_job
    queued      cancelled    cancel_job
    running     running      claim_next_job: another worker, once the lease ran out
    running     succeeded    finish_job
    running     failed       fail_job; retry_job or reap_expired_jobs once max_attempts are used
    running     queued       retry_job (attempts left; after a backoff), release_job (shutdown)
    running     cancelling   cancel_job: the worker stops at its next batch
    cancelling  cancelled    finish_cancelled; retry_job, release_job and reap_expired_jobs too:
                             they never retry, requeue or fail a cancelling job (`_or_cancelled`),
                             except one the time limit stopped (`heartbeat`): it ends `failed`
    cancelling  failed       fail_job: the attempt hit an error no retry fixes before it stopped

succeeded, failed and cancelled are final (`finished_at` is set exactly for them). A job's
checkpoint (weights and optimizer state, hundreds of MB for a big network) exists only to resume
it: every statement that can end a job deletes it in the same transaction (`_drop_checkpoints`);
its metrics, and a succeeded job's model, stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    Executable,
    Float,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from app.config import Settings
from app.job_status import LEASED, TERMINAL, JobStatus
from app.queue.clock import db_now, seconds_since
from app.services import registry
from app.tables import Job, JobCheckpoint, JobClaim, JobMetric, Model, new_id

NOTIFY_CHANNEL = "fitserve_jobs"
# Backoff after a crashed attempt doubles per attempt, up to this.
MAX_RETRY_BACKOFF_SECONDS = 300.0

jobs = cast(Table, Job.__table__)
claims = cast(Table, JobClaim.__table__)
metrics = cast(Table, JobMetric.__table__)
checkpoints = cast(Table, JobCheckpoint.__table__)
_cancelling = jobs.c.status == JobStatus.CANCELLING
# The status a stopped cancelling job ends in: `failed` when the time limit stopped it
# (`heartbeat` marks it so), else `cancelled`.
_stopped = case((jobs.c.error_code == "time_limit", JobStatus.FAILED), else_=JobStatus.CANCELLED)


def _or_cancelled(otherwise: Any, *, if_cancelling: Any = _stopped) -> Any:
    """`otherwise`, except for a cancelling job (`if_cancelling`: by default the status it ends
    in). Every statement that ends an attempt goes through this: a cancel always wins."""
    return case((_cancelling, if_cancelling), else_=otherwise)


# Jobs one API key may have on workers at once, unless the caller says otherwise: the setting's
# default, written once in app/config.py.
DEFAULT_MAX_RUNNING_PER_KEY: int = Settings.model_fields["max_running_jobs_per_key"].default


class QueueError(Exception):
    """Base of the queue's errors."""


class LeaseLost(QueueError):
    """A fenced write touched no row: another worker holds the job now, or it has ended."""


class JobNotFound(QueueError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class JobConflict(QueueError):
    """The job's state forbids the request (e.g. cancelling a job that already succeeded)."""

    def __init__(self, job_id: str, status: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status


@dataclass(frozen=True)
class Claim:
    """What a worker needs from the job row it just claimed."""

    job_id: str
    owner_id: str | None
    lease_token: int
    attempts: int
    max_attempts: int
    name: str | None
    dataset_id: str
    network: dict[str, Any]
    training: dict[str, Any]
    epochs: int
    epoch: int


def _execute(session: Session, statement: Executable) -> CursorResult[Any]:
    """An UPDATE/INSERT whose rowcount matters (the fence)."""
    return cast(CursorResult[Any], session.execute(statement))


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _fenced(job_id: str, lease_token: int, statuses: tuple[JobStatus, ...] = LEASED) -> Any:
    return and_(jobs.c.id == job_id, jobs.c.lease_token == lease_token, jobs.c.status.in_(statuses))


def _update_fenced(
    session: Session,
    *,
    job_id: str,
    lease_token: int,
    statuses: tuple[JobStatus, ...] = LEASED,
    **values: Any,
) -> None:
    """Every later write of a worker: an UPDATE of its own job under its lease token. Touching no
    row means another worker (or a cancel) took the job: raise LeaseLost, write nothing more."""
    result = _execute(
        session, update(jobs).where(_fenced(job_id, lease_token, statuses)).values(**values)
    )
    if result.rowcount == 0:
        raise LeaseLost(job_id)


def _drop_checkpoints(session: Session, job_ids: list[str]) -> None:
    """Delete the checkpoints of those of `job_ids` that have ended: a statement that may or may
    not end a job (a retry, a release, a cancel) calls this after it, with the same result."""
    ended = select(jobs.c.id).where(jobs.c.id.in_(job_ids), jobs.c.status.in_(TERMINAL))
    session.execute(delete(checkpoints).where(checkpoints.c.job_id.in_(ended)))


def _close_claim(session: Session, *, job_id: str, lease_token: int, outcome: str) -> None:
    """End the audit row of this attempt, so claims can be checked for overlap."""
    session.execute(
        update(claims)
        .where(claims.c.job_id == job_id, claims.c.lease_token == lease_token)
        .where(claims.c.ended_at.is_(None))
        .values(ended_at=db_now(), outcome=outcome)
    )


def enqueue_job(session: Session, *, job: Job) -> Job:
    """Queue a job: an INSERT in the caller's transaction; Postgres wakes idle workers at commit."""
    job.status = JobStatus.QUEUED
    session.add(job)
    session.flush()
    if _is_postgres(session):
        # NOTIFY is transactional: listeners hear it only if (and when) the INSERT commits.
        session.execute(
            text("SELECT pg_notify(:channel, :job_id)"),
            {"channel": NOTIFY_CHANNEL, "job_id": job.id},
        )
    return job


WORKER_LOST_ERROR = (
    "the job's worker stopped responding (crashed, was killed or lost the database) on every "
    "one of its attempts; check the worker logs for out-of-memory kills, or try a smaller "
    "batch_size or network"
)


def reap_expired_jobs(session: Session) -> int:
    """End jobs whose worker vanished and that may not run again: a cancelling job is cancelled;
    one that used up max_attempts fails with `worker_lost` instead of crash-looping."""
    reaped = (
        session.execute(
            update(jobs)
            .where(
                jobs.c.status.in_(LEASED),
                jobs.c.lease_expires_at < db_now(),
                or_(_cancelling, jobs.c.attempts >= jobs.c.max_attempts),
            )
            .values(
                status=_or_cancelled(JobStatus.FAILED),
                error_code=_or_cancelled("worker_lost", if_cancelling=jobs.c.error_code),
                error=_or_cancelled(WORKER_LOST_ERROR, if_cancelling=jobs.c.error),
                finished_at=db_now(),
                lease_expires_at=None,
                updated_at=db_now(),
            )
            .returning(jobs.c.id)
        )
        .scalars()
        .all()
    )
    if reaped:
        session.execute(
            update(claims)
            .where(claims.c.job_id.in_(reaped), claims.c.ended_at.is_(None))
            .values(ended_at=db_now(), outcome="lease_expired")
        )
        _drop_checkpoints(session, list(reaped))
    return len(reaped)


def _claimable(t: Any) -> Any:
    """Queued jobs whose backoff has passed, and running jobs whose worker's lease ran out."""
    return or_(
        and_(t.c.status == JobStatus.QUEUED, t.c.available_at <= db_now()),
        and_(
            t.c.status == JobStatus.RUNNING,
            t.c.lease_expires_at < db_now(),
            t.c.attempts < t.c.max_attempts,
        ),
    )


def _next_job_id() -> Any:
    """The id of the next job to claim, locked (SKIP LOCKED): fair share between API keys.

    A key's share is its jobs on workers (the candidate aside: a lease-expired job being taken
    over is still `running`), plus its claimable queued jobs older than the candidate. Counting
    the older ones makes concurrent claimers, which all see the same running counts and skip
    each other's locked rows, take one job per key in turn and stop at the cap, instead of all
    taking the oldest key's next jobs.

    Each count stops at the cap (LIMIT), seeking on ix_jobs_owner_status: a share of the cap or
    more is past it whatever its size, and a share below the cap is made of whole counts, so
    the filter and the order are those of the full counts. Counted in full, a keyed candidate
    read all its key's older queued jobs, and a claim was quadratic in a key's queue (0.55 s
    over 2,000 jobs of 4 keys on Postgres; bench/RESULTS.md). Keyless candidates count
    nothing."""
    candidate = jobs.alias("candidate")
    cap = bindparam("max_running_per_key", type_=Integer())

    def up_to_cap(others: Any, *where: Any) -> Any:
        """How many of the candidate's key's jobs match `where`, counted up to the cap."""
        found = (
            select(others.c.id)
            .where(others.c.owner_id == candidate.c.owner_id, *where)
            .limit(cap)
            .correlate(candidate)
            .subquery()
        )
        return select(func.count()).select_from(found).scalar_subquery()

    # One count per status on workers: equalities the index seeks on, where the planner may
    # leave an IN list on its second column to a filter over all the key's jobs.
    on_workers = [jobs.alias(f"on_workers_{status.value}") for status in LEASED]
    older = jobs.alias("older")
    share = sum(
        (
            up_to_cap(others, others.c.status == status, others.c.id != candidate.c.id)
            for others, status in zip(on_workers, LEASED, strict=True)
        ),
        start=up_to_cap(
            older,
            older.c.status == JobStatus.QUEUED,
            older.c.available_at <= db_now(),
            older.c.created_at < candidate.c.created_at,
        ),
    )
    keyless = candidate.c.owner_id.is_(None)  # the one local user's jobs: not capped
    return (
        select(candidate.c.id)
        .where(_claimable(candidate), or_(keyless, share < cap))
        # Fair share: the key with the fewest jobs on workers first, then the oldest job.
        .order_by(case((keyless, 0), else_=share), candidate.c.available_at, candidate.c.created_at)
        .limit(1)
        .with_for_update(of=candidate, skip_locked=True)
        .scalar_subquery()
    )


def claim_update(next_id: Any) -> Any:
    """UPDATE the job `next_id` selects to `running` under a new lease token, RETURNING the
    Claim."""
    return (
        update(jobs)
        # Re-checked on the row itself, as it is once the lock is ours.
        .where(jobs.c.id == next_id, _claimable(jobs))
        .values(
            status=JobStatus.RUNNING,
            claimed_by=bindparam("claimer", type_=String()),
            lease_token=jobs.c.lease_token + 1,
            attempts=jobs.c.attempts + 1,
            lease_expires_at=db_now(bindparam("lease_seconds", type_=Float())),
            heartbeat_at=db_now(),
            started_at=db_now(),
            updated_at=db_now(),
        )
        .returning(*_CLAIM_COLUMNS)
    )


_CLAIM_COLUMNS = (
    jobs.c.id,
    jobs.c.owner_id,
    jobs.c.lease_token,
    jobs.c.attempts,
    jobs.c.max_attempts,
    jobs.c.name,
    jobs.c.dataset_id,
    jobs.c.network,
    jobs.c.training,
    jobs.c.epochs,
    jobs.c.epoch,
)


def _claim_with_audit(claim: Any) -> Any:
    """Postgres: the claim and its audit rows in one statement (data-modifying CTEs), one round
    trip instead of three: the claimed job's previous claim, if its lease ran out, is closed
    and this claim's row inserted, all on the statement's one snapshot."""
    claimed = claim.cte("claimed")
    closed = (
        update(claims)
        .where(claims.c.job_id.in_(select(claimed.c.id)), claims.c.ended_at.is_(None))
        .values(ended_at=db_now(), outcome="lease_expired")
        .returning(claims.c.id)
        .cte("closed")
    )
    audit = (
        insert(claims)
        .from_select(
            ["job_id", "lease_token", "worker", "claimed_at"],
            select(
                claimed.c.id,
                claimed.c.lease_token,
                bindparam("claimer", type_=String()),
                db_now(),
            ),
        )
        .returning(claims.c.id)
        .cte("audit")
    )
    return select(*(claimed.c[column.name] for column in _CLAIM_COLUMNS)).add_cte(closed, audit)


@dataclass(frozen=True)
class ClaimStatements:
    """The claim UPDATE (SQLite, which runs the audit writes after it) and the same claim with
    its audit writes in one statement (Postgres)."""

    claim: Any
    with_audit: Any

    @classmethod
    def of(cls, claim: Any) -> ClaimStatements:
        return cls(claim, _claim_with_audit(claim))


# Built once: constructing the aliased subqueries costs more than running them.
CLAIM_NEXT_JOB = ClaimStatements.of(claim_update(_next_job_id()))


def claim_next_job(
    session: Session,
    *,
    worker: str,
    lease_seconds: float,
    max_running_per_key: int = DEFAULT_MAX_RUNNING_PER_KEY,
) -> Claim | None:
    """Take the next claimable job with one UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
    LOCKED LIMIT 1): Postgres claimers skip each other's locked row; on SQLite the lock clause
    drops out, BEGIN IMMEDIATE already made this transaction the only writer. The audit row of
    the claim (job_claims) is written with it: on Postgres in the same statement, on SQLite
    (no INSERT or UPDATE inside WITH) by two more.

    Fair share between API keys: a key with `max_running_per_key` jobs on workers gets no more,
    and among the rest the key with the fewest running jobs goes first (then the oldest job).
    Two Postgres claims racing for the same key's last slot may both win, so a key can pass
    the cap by at most the number of workers claiming at that instant, never for long.

    The claim commits with the transaction's usual fsync. An asynchronous commit
    (synchronous_commit = off) would save it, but a claim lost in a database crash hands the
    job out again under the same lease token (lease_token + 1 once more): the worker that
    still runs the lost claim would pass the fence of every later write as if it were the new
    holder, and two workers would train one job. Leases fence only tokens that never repeat."""
    return run_claim(
        session,
        CLAIM_NEXT_JOB,
        worker=worker,
        lease_seconds=lease_seconds,
        max_running_per_key=max_running_per_key,
    )


def run_claim(
    session: Session,
    statements: ClaimStatements,
    *,
    worker: str,
    lease_seconds: float,
    max_running_per_key: int,
) -> Claim | None:
    """`claim_next_job` with the claim statements given (bench/queue_latency.py runs an earlier
    claim statement through it, beside the current one)."""
    params = {
        # Not "worker": a parameter named after a column of a table that a statement (or one of
        # its CTEs) writes, job_claims.worker here, is taken by SQLAlchemy as that column's value.
        "claimer": worker,
        "lease_seconds": float(lease_seconds),
        "max_running_per_key": max_running_per_key,
    }
    if _is_postgres(session):
        row = session.execute(statements.with_audit, params).one_or_none()
        return None if row is None else _claim_of(row)
    row = session.execute(statements.claim, params).one_or_none()
    if row is None:
        return None
    # A re-claimed job's previous attempt ended when its lease ran out.
    session.execute(
        update(claims)
        .where(claims.c.job_id == row.id, claims.c.ended_at.is_(None))
        .values(ended_at=db_now(), outcome="lease_expired")
    )
    session.execute(
        insert(claims).values(
            job_id=row.id, lease_token=row.lease_token, worker=worker, claimed_at=db_now()
        )
    )
    return _claim_of(row)


def _claim_of(row: Any) -> Claim:
    return Claim(
        job_id=row.id,
        owner_id=row.owner_id,
        lease_token=row.lease_token,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        name=row.name,
        dataset_id=row.dataset_id,
        network=row.network,
        training=row.training,
        epochs=row.epochs,
        epoch=row.epoch,
    )


TIME_LIMIT_ERROR = (
    "the job ran past the time limit of {seconds:,.0f} s (FITSERVE_MAX_JOB_SECONDS), its attempts "
    "together; train for fewer epochs, or on less data, or ask for a higher limit"
)


def _proof_of_life() -> dict[str, Any]:
    """The values a heartbeat or an epoch end sets: now as the last sign of life, and the time
    since the previous one (or the claim, which sets heartbeat_at too) added to run_seconds. So
    run_seconds sums every attempt from its claim to its last sign of life: a queued job's wait
    is not counted, a killed attempt's time after its last heartbeat is lost (a heartbeat at
    most)."""
    return {
        "run_seconds": jobs.c.run_seconds + seconds_since(jobs.c.heartbeat_at),
        "heartbeat_at": db_now(),
    }


def heartbeat(
    session: Session,
    *,
    job_id: str,
    lease_token: int,
    lease_seconds: float,
    max_job_seconds: float | None = None,
    time_limit_error: str | None = None,
) -> str:
    """Extend the lease; returns the status so the worker learns of a cancel request.
    A job that has run for longer than `max_job_seconds`, its attempts together (run_seconds,
    `_proof_of_life`), becomes `cancelling` here with error_code `time_limit` and
    `time_limit_error` (by default the server limit's message): the worker stops it at the next
    batch as it stops a cancel, and `finish_cancelled` ends it `failed`. A job retried after its
    worker died has only what its earlier attempts left of the limit. Raises LeaseLost when the
    job is no longer ours."""
    values = _proof_of_life()
    if max_job_seconds is not None:
        overdue = and_(
            jobs.c.status == JobStatus.RUNNING, values["run_seconds"] > float(max_job_seconds)
        )
        values |= {
            "status": case((overdue, JobStatus.CANCELLING), else_=jobs.c.status),
            "error_code": case((overdue, "time_limit"), else_=jobs.c.error_code),
            "error": case(
                (overdue, time_limit_error or TIME_LIMIT_ERROR.format(seconds=max_job_seconds)),
                else_=jobs.c.error,
            ),
        }
    status = session.execute(
        update(jobs)
        .where(_fenced(job_id, lease_token))
        .values(lease_expires_at=db_now(lease_seconds), **values)
        .returning(jobs.c.status)
    ).scalar_one_or_none()
    if status is None:
        raise LeaseLost(job_id)
    return str(status)


def job_status(session: Session, *, job_id: str, lease_token: int) -> str:
    """A running job's status, read between heartbeats to notice a cancel request.
    Raises LeaseLost when the job is no longer ours."""
    status = session.scalar(select(jobs.c.status).where(_fenced(job_id, lease_token)))
    if status is None:
        raise LeaseLost(job_id)
    return str(status)


def set_runtime(session: Session, *, job_id: str, lease_token: int, device: str | None) -> None:
    """Record where the attempt runs (None while a job on device "auto" waits for models.fit to
    place it). What its steps run as — precision, step mode — is unknown until its first epoch
    reports it (`record_epoch`), so an earlier attempt's values are cleared."""
    _update_fenced(
        session,
        job_id=job_id,
        lease_token=lease_token,
        device=device,
        updated_at=db_now(),
        **_ran_columns(None),
    )


def _ran_columns(ran: dict[str, Any] | None) -> dict[str, Any]:
    """What an attempt's steps ran as, as the child reports it: {"step_mode", "step_mode_reason",
    "precision"} (app/queue/child.py: ran)."""
    ran = ran or {}
    return {key: ran.get(key) for key in ("step_mode", "step_mode_reason", "precision")}


def record_epoch(
    session: Session,
    *,
    job_id: str,
    lease_token: int,
    epoch: int,
    values: dict[str, Any],
    checkpoint: bytes,
    lease_seconds: float,
    ran: dict[str, Any] | None = None,
) -> None:
    """One finished epoch: its metrics row, the checkpoint to resume from and the job's progress,
    together; `ran` (what the steps ran as) goes on the epoch's row and the job's. The fenced
    UPDATE goes first, so a worker that lost the job writes nothing; it also extends the lease,
    an epoch end being proof of life."""
    _update_fenced(
        session,
        job_id=job_id,
        lease_token=lease_token,
        epoch=epoch,
        lease_expires_at=db_now(lease_seconds),
        updated_at=db_now(),
        **_proof_of_life(),
        **({} if ran is None else _ran_columns(ran)),
    )
    _insert_metrics(
        session, job_id=job_id, lease_token=lease_token, epoch=epoch, values=values, ran=ran
    )
    session.execute(delete(checkpoints).where(JobCheckpoint.job_id == job_id))
    session.execute(
        insert(checkpoints).values(
            job_id=job_id,
            epoch=epoch,
            lease_token=lease_token,
            data=checkpoint,
            created_at=db_now(),
        )
    )


def _insert_metrics(
    session: Session,
    *,
    job_id: str,
    lease_token: int,
    epoch: int,
    values: dict[str, Any],
    ran: dict[str, Any] | None,
) -> None:
    session.execute(
        insert(metrics).values(
            job_id=job_id,
            epoch=epoch,
            lease_token=lease_token,
            loss=values.get("loss"),
            values=values,
            created_at=db_now(),
            **_ran_columns(ran),
        )
    )


def load_checkpoint(session: Session, *, job_id: str) -> tuple[int, bytes] | None:
    """The latest checkpoint (epoch, models.Checkpoint bytes) a re-claimed job resumes from."""
    row = session.execute(
        select(JobCheckpoint.epoch, JobCheckpoint.data).where(JobCheckpoint.job_id == job_id)
    ).one_or_none()
    return None if row is None else (int(row.epoch), bytes(row.data))


def finish_job(
    session: Session,
    *,
    job_id: str,
    lease_token: int,
    model: Model,
    last_epoch: tuple[int, dict[str, Any]] | None = None,
    ran: dict[str, Any] | None = None,
) -> None:
    """Success, atomically: the final epoch's metrics row (`last_epoch`: (epoch, values), when
    not already recorded), the Model row with the final weights and metrics, and `succeeded`
    commit together or not at all. Raises LeaseLost if the job is no longer ours or not
    running (a cancel that arrived during the last epoch: see `finish_cancelled`)."""
    model.id = model.id or new_id()
    model.job_id = job_id
    progress = {} if last_epoch is None else {"epoch": last_epoch[0]}
    if ran is not None:  # what the last epoch's steps ran as
        progress.update(_ran_columns(ran))
    _update_fenced(
        session,
        job_id=job_id,
        lease_token=lease_token,
        statuses=(JobStatus.RUNNING,),
        status=JobStatus.SUCCEEDED,
        model_id=model.id,
        error=None,
        error_code=None,
        lease_expires_at=None,
        finished_at=db_now(),
        updated_at=db_now(),
        **progress,
    )
    if last_epoch is None:  # every epoch is recorded already (a resumed, finished run)
        model.metrics = session.scalar(
            select(JobMetric.values)
            .where(JobMetric.job_id == job_id)
            .order_by(JobMetric.epoch.desc())
            .limit(1)
        )
    else:
        model.metrics = last_epoch[1]
        _insert_metrics(
            session,
            job_id=job_id,
            lease_token=lease_token,
            epoch=last_epoch[0],
            values=last_epoch[1],
            ran=ran,
        )
    session.add(model)
    session.flush()
    job = session.get(Job, job_id)
    if job is not None and job.register_as is not None:  # submitted with register_as
        registry.register(session, owner=job.owner_id, name=job.register_as, model_id=model.id)
    _close_claim(session, job_id=job_id, lease_token=lease_token, outcome="succeeded")
    _drop_checkpoints(session, [job_id])


def finish_cancelled(session: Session, *, job_id: str, lease_token: int) -> None:
    """The worker stopped a cancelling job: it ends `cancelled`, keeping the metrics so far;
    or `failed` when what stopped it was the time limit (see `heartbeat`)."""
    _update_fenced(
        session,
        job_id=job_id,
        lease_token=lease_token,
        statuses=(JobStatus.CANCELLING,),
        status=_stopped,
        lease_expires_at=None,
        finished_at=db_now(),
        updated_at=db_now(),
    )
    _close_claim(session, job_id=job_id, lease_token=lease_token, outcome="cancelled")
    _drop_checkpoints(session, [job_id])


def fail_job(
    session: Session, *, job_id: str, lease_token: int, error: str, error_code: str
) -> None:
    """A failure no retry can fix (a spec that can't train, out of memory): `failed` at once,
    with an error the user can act on."""
    _update_fenced(
        session,
        job_id=job_id,
        lease_token=lease_token,
        status=JobStatus.FAILED,
        error=error,
        error_code=error_code,
        lease_expires_at=None,
        finished_at=db_now(),
        updated_at=db_now(),
    )
    _close_claim(session, job_id=job_id, lease_token=lease_token, outcome="failed")
    _drop_checkpoints(session, [job_id])


def retry_job(
    session: Session,
    *,
    job_id: str,
    lease_token: int,
    error: str,
    error_code: str,
    backoff_seconds: float,
) -> str:
    """An attempt that crashed (its training process died): back to the queue after a backoff,
    or — once max_attempts are used — `failed` with `error_code`. Returns the new status.
    A cancelling job is cancelled rather than retried."""
    fence = _fenced(job_id, lease_token)
    attempts_left = jobs.c.attempts < jobs.c.max_attempts
    row = session.execute(
        update(jobs)
        .where(fence)
        .values(
            status=_or_cancelled(case((attempts_left, JobStatus.QUEUED), else_=JobStatus.FAILED)),
            error=_or_cancelled(error, if_cancelling=jobs.c.error),
            error_code=_or_cancelled(
                case((attempts_left, None), else_=error_code), if_cancelling=jobs.c.error_code
            ),
            available_at=db_now(min(backoff_seconds, MAX_RETRY_BACKOFF_SECONDS)),
            finished_at=_or_cancelled(
                case((attempts_left, None), else_=db_now()), if_cancelling=db_now()
            ),
            claimed_by=None,
            lease_expires_at=None,
            updated_at=db_now(),
        )
        .returning(jobs.c.status)
    ).scalar_one_or_none()
    if row is None:
        raise LeaseLost(job_id)
    _close_claim(session, job_id=job_id, lease_token=lease_token, outcome="crashed")
    _drop_checkpoints(session, [job_id])  # attempts used up, or cancelled: ended
    return str(row)


def release_job(session: Session, *, job_id: str, lease_token: int) -> str:
    """Hand a job back on a graceful stop (SIGTERM) without an attempt penalty; it resumes from
    its last checkpoint on the next claim. A cancelling job is cancelled instead."""
    status = session.execute(
        update(jobs)
        .where(_fenced(job_id, lease_token))
        .values(
            status=_or_cancelled(JobStatus.QUEUED),
            finished_at=_or_cancelled(None, if_cancelling=db_now()),
            attempts=_or_cancelled(jobs.c.attempts - 1, if_cancelling=jobs.c.attempts),
            claimed_by=None,
            lease_expires_at=None,
            available_at=db_now(),
            updated_at=db_now(),
        )
        .returning(jobs.c.status)
    ).scalar_one_or_none()
    if status is None:
        raise LeaseLost(job_id)
    _close_claim(session, job_id=job_id, lease_token=lease_token, outcome="released")
    _drop_checkpoints(session, [job_id])  # a cancelling job ends here; a queued one keeps it
    return str(status)


def stop_owner_jobs(session: Session, *, owner_id: str, error: str, error_code: str) -> list[str]:
    """Stop everything a key has in the queue, recording why on each job (a revoked key): its
    queued jobs end `cancelled` in this statement, its running ones become `cancelling` and
    their workers stop them at the next batch, as with a cancel. Returns the jobs touched."""
    queued = jobs.c.status == JobStatus.QUEUED
    touched = list(
        session.execute(
            update(jobs)
            .where(
                jobs.c.owner_id == owner_id,
                jobs.c.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
            )
            .values(
                status=case((queued, JobStatus.CANCELLED), else_=JobStatus.CANCELLING),
                finished_at=case((queued, db_now()), else_=None),
                error=error,
                error_code=error_code,
                updated_at=db_now(),
            )
            .returning(jobs.c.id)
        )
        .scalars()
        .all()
    )
    _drop_checkpoints(session, touched)  # a queued job handed back earlier may hold one
    return touched


def cancel_job(session: Session, *, job_id: str) -> Job:
    """Cancel: a queued job becomes `cancelled` in the same statement that checks it is still
    queued, so a concurrent claim either ran first (and the job is `cancelling`) or finds nothing.
    A running job becomes `cancelling`; its worker stops at the next batch boundary.
    Cancelling a job that is already cancelled or cancelling returns it unchanged.
    Raises JobNotFound, or JobConflict for a job that already succeeded or failed."""
    status = session.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(
            status=case(
                (jobs.c.status == JobStatus.QUEUED, JobStatus.CANCELLED),
                else_=JobStatus.CANCELLING,
            ),
            finished_at=case((jobs.c.status == JobStatus.QUEUED, db_now()), else_=None),
            updated_at=db_now(),
        )
        .returning(jobs.c.status)
    ).scalar_one_or_none()
    if status == JobStatus.CANCELLED:  # a queued job handed back earlier may hold one
        _drop_checkpoints(session, [job_id])
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    if status is None and job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise JobConflict(
            job_id,
            job.status,
            f"job {job_id} already {job.status}; only queued or running jobs can be cancelled",
        )
    return job


def delete_job_rows(session: Session, *, job_id: str) -> None:
    """A finished job's rows: its metrics, checkpoint, claims and the job itself. (Explicit
    deletes: SQLite enforces ON DELETE CASCADE only with a per-connection pragma.)"""
    for table in (JobMetric, JobCheckpoint, JobClaim):
        session.execute(delete(table).where(table.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
