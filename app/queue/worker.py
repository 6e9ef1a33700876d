"""The worker loop: claim a job, train it in a child process, write back under a fenced lease
(the attempt itself — the parent's side of the pipe: fork, heartbeat, fenced writes — is
app/queue/parent.py; the training process is app/queue/child.py).

    claim (one transaction: reap expired jobs, claim_next_job, set_runtime, read the inputs)
      -> fork child.run_attempt; start the heartbeat thread
      -> per message: started -> set_runtime (the device models.fit chose, when it differs from
         the claim's: device "auto"), epoch -> record_epoch (with the step mode and the
         precision the steps ran in), done -> finish_job (with the last
         epoch) / finish_cancelled / release_job, error -> fail_job or retry_job;
         child died -> retry_job
      -> stop the heartbeat thread, reap the child, claim again

Every write after the claim names the lease token. A write that touches no row (LeaseLost) means
another worker has the job: the child is killed, nothing more is written, and the worker exits
with EXIT_LEASE_LOST — it was stalled past its lease (paused, partitioned, starved), and a fresh
process under its supervisor (`fitserve serve`, compose, systemd) is the safe way back.

Cancellation: the heartbeat thread reads the job's status with every lease extension and sets the
shared control word; the child checks that word after every batch.
Shutdown (SIGTERM/SIGINT): the child finishes its epoch (checkpointed), or stops at the next batch
once the grace period is over; the job goes back to the queue without an attempt penalty.
Idle: Postgres LISTEN fitserve_jobs wakes the worker on submit; polling is the fallback (and the
only way on SQLite).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.queue import store
from app.queue.parent import (
    Attempt,
    Claimed,
    LostJob,
    check_fork_safe,
    prepare_worker_process,
    probe_device,
)
from app.queue.protocol import EXIT_LEASE_LOST
from app.studies import conduct
from app.tables import Dataset

log = logging.getLogger("fitserve.worker")
T = TypeVar("T")

# Retry backoff for database errors: doubles from the first to the last value.
DB_RETRY_FIRST, DB_RETRY_MAX = 0.1, 2.0
# How often a worker ends jobs whose leases ran out for good (reap_expired_jobs).
REAP_INTERVAL_SECONDS = 1.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _is_transient(exc: BaseException) -> bool:
    """A database error worth retrying: the connection or server went away, or a lock timed out."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))


def _engine_options(settings: Settings) -> dict[str, Any]:
    if not settings.is_postgres:
        return {}
    # A worker frozen inside a transaction (SIGSTOP, a paused VM) would hold the job's row lock
    # and keep the worker taking over from claiming it; the server ends such a session once it
    # has idled for a lease. The worker's own transactions last milliseconds.
    timeout_ms = max(1000, int(settings.lease_seconds * 1000))
    return {"connect_args": {"options": f"-c idle_in_transaction_session_timeout={timeout_ms}"}}


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        device: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or worker_name()
        self.device = device or settings.device
        # The device as the probe resolved it ("auto" -> "cpu" or "cuda:0"); set on first run.
        # It proves the device works; with "auto" each job's own device is chosen by models.fit.
        self.runtime_device: str | None = None
        self.engine = engine or make_engine(settings.database_url, **_engine_options(settings))
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.stopping = threading.Event()
        self._listener: psycopg.Connection[Any] | None = None
        self._next_reap = 0.0

    # ------------------------------------------------------------------ the loop

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Claim and train until stopped; returns the process exit code."""
        if self.runtime_device is None:
            probe = probe_device(self.device)
            if not probe["ok"]:
                raise RuntimeError(f"cannot train on device {self.device!r}: {probe['error']}")
            self.runtime_device = probe["device"]
        done = 0
        try:
            while not self.stopping.is_set():
                check_fork_safe()  # before a claim: no job is claimed by a worker that cannot fork
                claimed = self._claim()
                if claimed is None:
                    if exit_when_idle:
                        return 0
                    self._wait_for_work()
                    continue
                try:
                    Attempt(
                        claimed,
                        write=self.write,
                        stopping=self.stopping,
                        settings=self.settings,
                        device=self.fit_device,
                        worker_name=self.name,
                    ).run()
                except LostJob as exc:
                    log.warning("%s: gave up job %s: %s", self.name, claimed.claim.job_id, exc)
                    return EXIT_LEASE_LOST
                done += 1
                if max_jobs is not None and done >= max_jobs:
                    return 0
            return 0
        finally:
            self._close_listener()

    @property
    def fit_device(self) -> str:
        """The device handed to models.fit: "auto" stays "auto", so models/placement.py can
        measure whether this job's whole run ends on the CPU before a GPU would have started."""
        if self.device == "auto":
            return "auto"
        assert self.runtime_device is not None
        return self.runtime_device

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("%s: %s received, stopping", self.name, signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _claim(self) -> Claimed | None:
        """One transaction: end lost jobs, claim the next, note where it runs, read its inputs."""
        device = self.fit_device
        try:
            with self.sessions.begin() as session:
                now = time.monotonic()
                if now >= self._next_reap:  # rare work: not a statement on every claim
                    store.reap_expired_jobs(session)
                    # trials whose jobs ended where no worker saw it (a cancelled queued trial)
                    conduct.advance_running(session, settings=self.settings)
                    self._next_reap = now + REAP_INTERVAL_SECONDS
                claim = store.claim_next_job(
                    session,
                    worker=self.name,
                    lease_seconds=self.settings.lease_seconds,
                    max_running_per_key=self.settings.max_running_jobs_per_key,
                )
                if claim is None:
                    return None
                # "auto" is placed by the training process, which reports it; the precision and
                # step mode are recorded from what the first epoch's steps ran as
                placed = None if device == "auto" else device
                store.set_runtime(
                    session, job_id=claim.job_id, lease_token=claim.lease_token, device=placed
                )
                dataset = session.get(Dataset, claim.dataset_id)
                checkpoint = store.load_checkpoint(session, job_id=claim.job_id)
        except sa_exc.DBAPIError as exc:
            if not _is_transient(exc):
                raise
            log.warning("%s: database unavailable while claiming: %s", self.name, exc.orig)
            self.stopping.wait(min(self.settings.poll_seconds * 4, DB_RETRY_MAX))
            return None
        log.info("%s: claimed job %s (attempt %d)", self.name, claim.job_id, claim.attempts)
        return Claimed(claim, dataset, checkpoint[1] if checkpoint else None, placed)

    # ------------------------------------------------------------------ idle wake-up

    def _wait_for_work(self) -> None:
        if not self.engine.dialect.name == "postgresql":
            self.stopping.wait(self.settings.poll_seconds)
            return
        try:
            listener = self._listen()
            # Returns on the first NOTIFY, or after the poll interval (the fallback).
            for _ in listener.notifies(timeout=self.settings.poll_seconds, stop_after=1):
                pass
            for _ in listener.notifies(timeout=0):  # drain a burst: one claim looks at them all
                pass
        except psycopg.Error as exc:
            log.warning("%s: LISTEN connection lost (%s); polling", self.name, exc)
            self._close_listener()
            self.stopping.wait(self.settings.poll_seconds)

    def _listen(self) -> psycopg.Connection[Any]:
        if self._listener is None or self._listener.closed:
            url = make_url(self.settings.database_url).set(drivername="postgresql")
            conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            conn.execute(f"LISTEN {store.NOTIFY_CHANNEL}")
            self._listener = conn
            log.info("%s: listening for %s", self.name, store.NOTIFY_CHANNEL)
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except psycopg.Error:
                pass
            self._listener = None

    # ------------------------------------------------------------------ database writes

    def write(self, what: str, fn: Callable[[Session], T], *, patience: float) -> T:
        """Run a store write in its own transaction, retrying transient database errors with
        backoff for up to `patience` seconds. LeaseLost and exhaustion raise LostJob."""
        delay, deadline = DB_RETRY_FIRST, time.monotonic() + patience
        while True:
            try:
                with self.sessions.begin() as session:
                    return fn(session)
            except store.LeaseLost as exc:
                raise LostJob(f"{what} refused: the lease is held by another worker") from exc
            except sa_exc.DBAPIError as exc:
                if not _is_transient(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise LostJob(f"{what}: the database stayed unavailable") from exc
                log.warning(
                    "%s: %s failed (%s); retrying in %.1fs", self.name, what, exc.orig, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX)


def run_worker(settings: Settings, *, device: str | None = None) -> int:
    """`fitserve worker`: one worker process until SIGTERM/SIGINT."""
    prepare_worker_process()
    worker = Worker(settings, device=device)
    url = make_url(settings.database_url).render_as_string()
    try:
        if not inspect(worker.engine).has_table("jobs"):
            log.error("%s has no fitserve tables yet; run `fitserve migrate` first", url)
            return 2
        probe = probe_device(worker.device)
        if not probe["ok"]:
            log.error("cannot train on device %r: %s", worker.device, probe["error"])
            return 2
        worker.runtime_device = probe["device"]
        worker.install_signal_handlers()
        log.info("%s: training on %s, jobs from %s", worker.name, probe["name"], url)
        return worker.run()
    finally:
        worker.engine.dispose()
