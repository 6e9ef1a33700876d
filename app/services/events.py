"""A job's progress as server-sent events (GET /v1/jobs/{id}/events), built from database rows.

    retry: 1000

    event: status                     a status change: {"status", "epoch", "epochs", ...}
    id: 0
    data: {"status": "running", ...}

    event: epoch                      one per metrics row, data = the row (same as /metrics)
    id: 1
    data: {"epoch": 1, "loss": 1.02, ...}

    : keep-alive                      a comment while nothing happens, so proxies keep it open

An event's id is the number of epochs delivered so far, so a reconnect with `Last-Event-ID: N`
(what EventSource and fitserve_client send) resumes with epoch N+1: nothing lost, nothing
repeated. A (re)connection opens with the job's current status; the last event carries the
terminal status, after the final epoch. Everything comes from the rows the worker writes, so the
stream survives API restarts and works with workers on other machines.

Each poll opens its own short-lived session: a session held for the stream's lifetime would pin
a pooled connection (and, on SQLite, a transaction) for minutes. When the client goes away the
response is cancelled and the polling stops with it.

`poll_stream` is that loop for every stream: a study's (app/services/studies.py) hands it its
own `ReadBatch`, and gets the same pacing, keep-alives, database retries and the same end for a
revoked key's stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth import is_revoked
from app.errors import NotFound, Unprocessable
from app.job_status import TERMINAL
from app.prometheus import EVENT_STREAMS
from app.services import is_id, owned_by
from app.services.jobs import finite_or_none
from app.tables import Job, JobMetric

# Between polls of the database: well under an epoch of a small network, light on the database.
POLL_SECONDS = 0.5
# A comment after this much silence; proxies commonly drop idle connections after 60 s.
KEEPALIVE_SECONDS = 15.0
# Consecutive failed polls (backing off 2x each) before the stream ends and the client reconnects.
MAX_POLL_FAILURES = 6
# Epoch rows sent per poll at most, so a reconnect to a long job streams in bounded batches.
BATCH_ROWS = 500
# An event id as this stream writes it; the query parameter's bound (10,000,000) has 8 digits.
_EVENT_ID = re.compile(r"[0-9]{1,8}")

log = logging.getLogger("fitserve.events")

SessionFactory = Callable[[], Session]


def read_job_status(session: Session, *, owner: str | None, job_id: str) -> dict[str, Any] | None:
    """The job's state as a status event's data; None when it doesn't exist or isn't the
    caller's."""
    if not is_id(job_id):
        return None
    job = session.scalar(select(Job).where(Job.id == job_id, owned_by(Job.owner_id, owner)))
    if job is None:
        return None
    return {
        "status": job.status,
        "epoch": job.epoch,
        "epochs": job.epochs,
        "device": job.device,
        "attempts": job.attempts,
        "model_id": job.model_id,
        "error": job.error,
        "error_code": job.error_code,
    }


def read_epochs_after(session: Session, *, job_id: str, after: int) -> list[dict[str, Any]]:
    """Metrics rows past epoch `after`, in order, each as its JSON object."""
    rows = session.scalars(
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.epoch > after)
        .order_by(JobMetric.epoch)
        .limit(BATCH_ROWS)
    )
    return [finite_or_none({**(row.values or {}), "epoch": row.epoch}) for row in rows]


def _status(make_session: SessionFactory, *, owner: str | None, job_id: str) -> Any:
    with make_session() as session:
        return read_job_status(session, owner=owner, job_id=job_id)


def sse_event(kind: str, event_id: int, data: dict[str, Any]) -> str:
    return f"event: {kind}\nid: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(frozen=True)
class Batch:
    """What one poll found: its events as SSE text (empty when nothing happened), the event id
    the next poll resumes after, whether the stream's last event is among them, and whether the
    batch was full (more is waiting: poll again at once)."""

    text: str
    after: int
    last: bool = False
    full: bool = False


# One poll of a stream: (session, after) -> the Batch, or None when what it follows is gone or
# not the caller's. Runs in the thread pool, one call at a time per stream.
ReadBatch = Callable[[Session, int], Batch | None]


def _poll(
    make_session: SessionFactory, read: ReadBatch, *, owner: str | None, after: int
) -> Batch | None:
    with make_session() as session:
        if is_revoked(session, owner):  # revocation closes open streams, within a poll
            return None
        return read(session, after)


async def poll_stream(
    make_session: SessionFactory,
    read: ReadBatch,
    *,
    owner: str | None,
    after: int,
    what: str,
    poll_seconds: float = POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """The loop behind every event stream (a job's, a study's): poll `read` in a short session
    of its own, after checking the caller's key is still valid; send what it found, or a
    keep-alive comment after `keepalive_seconds` of silence; ride out a database blip; end when
    the batch says so, or when the key is revoked or the thing followed is gone."""
    EVENT_STREAMS.inc()
    try:
        yield "retry: 1000\n\n"
        last_write = time.monotonic()
        failures = 0
        while True:
            try:
                batch = await run_in_threadpool(_poll, make_session, read, owner=owner, after=after)
                failures = 0
            except sa_exc.DBAPIError as exc:
                # The database blinked (restart, failover): keep the client and try again; if it
                # stays away, end the stream so the client reconnects and meets a clean 503.
                failures += 1
                log.warning("event stream for %s: database poll failed: %s", what, exc)
                if failures >= MAX_POLL_FAILURES:
                    return
                await asyncio.sleep(poll_seconds * 2**failures)
                continue
            if batch is None:  # deleted while we watched, or the key was revoked
                return
            after = batch.after
            if batch.text:
                yield batch.text
                last_write = time.monotonic()
                if batch.last:
                    return
                if batch.full:
                    continue  # more rows waiting: no pause
            elif time.monotonic() - last_write >= keepalive_seconds:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
            await asyncio.sleep(poll_seconds)
    finally:
        EVENT_STREAMS.dec()


class _JobEvents:
    """A job's stream: a status event when the status changes, then its new epochs; the last
    event carries the terminal status, after the final epoch."""

    def __init__(self, *, owner: str | None, job_id: str) -> None:
        self.owner = owner
        self.job_id = job_id
        self.sent_status: str | None = None

    def __call__(self, session: Session, after: int) -> Batch | None:
        # Status first: the worker commits an epoch's row before it marks the job finished, so a
        # terminal status read here guarantees the rows read next include the last epoch.
        status = read_job_status(session, owner=self.owner, job_id=self.job_id)
        if status is None:
            return None
        rows = read_epochs_after(session, job_id=self.job_id, after=after)
        full = len(rows) == BATCH_ROWS
        last = status["status"] in TERMINAL and not full
        chunks = []
        if status["status"] != self.sent_status and status["status"] not in TERMINAL:
            chunks.append(sse_event("status", after, status))
            self.sent_status = status["status"]
        for row in rows:
            after = row["epoch"]
            chunks.append(sse_event("epoch", after, row))
        if last:
            chunks.append(sse_event("status", after, status))
        return Batch("".join(chunks), after, last=last, full=full)


def stream_events(
    make_session: SessionFactory,
    *,
    owner: str | None,
    job_id: str,
    after: int,
    poll_seconds: float = POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """A job's event stream from epoch `after` on."""
    return poll_stream(
        make_session,
        _JobEvents(owner=owner, job_id=job_id),
        owner=owner,
        after=after,
        what=f"job {job_id}",
        poll_seconds=poll_seconds,
        keepalive_seconds=keepalive_seconds,
    )


def resume_after(last_event_id: str | None, after_query: int | None) -> int:
    """The epoch to resume after: the Last-Event-ID header's, else the query's, else 0."""
    after = after_query or 0
    if last_event_id is not None and last_event_id.strip():
        # ASCII digits only: str.isdigit() also takes '²' or '٣', which int() then refuses.
        if not _EVENT_ID.fullmatch(last_event_id.strip()):
            raise Unprocessable(
                f"Last-Event-ID must be an event id this stream sent (a number of epochs, ASCII "
                f"digits 0-9), got {last_event_id!r}; omit it to start from the first epoch",
                loc=("header", "Last-Event-ID"),
            )
        after = int(last_event_id)
    return after


async def open_stream(
    make_session: SessionFactory, *, owner: str | None, job_id: str, after: int
) -> AsyncIterator[str]:
    """The caller's job's event stream; a 404 (before anything is sent) when there is none."""
    if await run_in_threadpool(_status, make_session, owner=owner, job_id=job_id) is None:
        raise NotFound(f"job {job_id!r} not found; list yours with GET /v1/jobs")
    return stream_events(make_session, owner=owner, job_id=job_id, after=after)
