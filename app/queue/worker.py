"""The worker loop: claim a job, train it in a child process, write back under a fenced lease.

    claim (one transaction: reap expired jobs, claim_next_job, set_runtime, read the inputs)
      -> fork runner.run_attempt; start the heartbeat thread
      -> per message: epoch -> record_epoch, done -> finish_job (with the last epoch) /
         finish_cancelled / release_job, error -> fail_job or retry_job; child died -> retry_job
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
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.queue import runner, store
from app.queue.launch import EXIT_LEASE_LOST
from app.tables import Dataset, Model

log = logging.getLogger("fitserve.worker")
T = TypeVar("T")

# Retry backoff for database errors: doubles from the first to the last value.
DB_RETRY_FIRST, DB_RETRY_MAX = 0.1, 2.0
# How often a worker ends jobs whose leases ran out for good (reap_expired_jobs).
REAP_INTERVAL_SECONDS = 1.0
# After the grace period the child stops at its next batch; this long after, it is killed.
KILL_AFTER_GRACE_SECONDS = 5.0
# fork: the child inherits the imported torch (a fresh interpreter would spend seconds importing
# it per attempt). Safe because the worker never initializes CUDA and runs no thread of its own
# while forking; the child never touches the inherited database connections.
_FORK = multiprocessing.get_context("fork")


@dataclass(frozen=True)
class Claimed:
    claim: store.Claim
    dataset: Dataset | None
    checkpoint: bytes | None  # models.Checkpoint bytes to resume from


class LostJob(Exception):
    """This worker may not write to the job any more (its lease is gone or the database is)."""


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
                claimed = self._claim()
                if claimed is None:
                    if exit_when_idle:
                        return 0
                    self._wait_for_work()
                    continue
                try:
                    Attempt(self, claimed).run()
                except LostJob as exc:
                    log.warning("%s: gave up job %s: %s", self.name, claimed.claim.job_id, exc)
                    return EXIT_LEASE_LOST
                done += 1
                if max_jobs is not None and done >= max_jobs:
                    return 0
            return 0
        finally:
            self._close_listener()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("%s: %s received, stopping", self.name, signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def _claim(self) -> Claimed | None:
        """One transaction: end lost jobs, claim the next, note where it runs, read its inputs."""
        assert self.runtime_device is not None
        device = self.runtime_device
        try:
            with self.sessions.begin() as session:
                now = time.monotonic()
                if now >= self._next_reap:  # rare work: not a statement on every claim
                    store.reap_expired_jobs(session)
                    self._next_reap = now + REAP_INTERVAL_SECONDS
                claim = store.claim_next_job(
                    session, worker=self.name, lease_seconds=self.settings.lease_seconds
                )
                if claim is None:
                    return None
                precision = (
                    str(claim.training.get("precision", "fp32"))
                    if device.startswith("cuda")
                    else "fp32"  # models/ trains in fp32 on CPU whatever the config says
                )
                store.set_runtime(
                    session,
                    job_id=claim.job_id,
                    lease_token=claim.lease_token,
                    device=device,
                    precision=precision,
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
        return Claimed(claim, dataset, checkpoint[1] if checkpoint else None)

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


class Attempt:
    """One claimed job on this worker: a training child, a heartbeat thread, fenced writes."""

    def __init__(self, worker: Worker, claimed: Claimed) -> None:
        self.worker, self.claim, self.claimed = worker, claimed.claim, claimed
        self.settings = worker.settings
        self.control = _FORK.Value("i", runner.RUN, lock=False)  # shared memory, read per batch
        self.lost = threading.Event()
        self.finished = threading.Event()
        self.process: Any = None
        self.dataset = claimed.dataset

    @property
    def patience(self) -> float:
        # Writes are fenced, so retrying past the lease is safe; a worker cut off for this long
        # gives the job up to whoever the database hands it next.
        return max(3 * self.settings.lease_seconds, 10.0)

    def _write(self, what: str, fn: Callable[[Session], T]) -> T:
        return self.worker.write(what, fn, patience=self.patience)

    def run(self) -> None:
        claim = self.claim
        inputs = self._inputs()
        if inputs is None:
            return
        parent_conn, child_conn = _FORK.Pipe(duplex=False)
        self.process = _FORK.Process(
            target=runner.run_attempt,
            args=(child_conn, self.control, inputs, os.getpid()),
            name=f"fitserve-train-{claim.job_id[:8]}",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        heartbeat = threading.Thread(target=self._heartbeat, name="fitserve-heartbeat", daemon=True)
        heartbeat.start()
        try:
            self._follow(parent_conn)
        finally:
            self.finished.set()
            if self.process.is_alive():
                self.process.kill()
            self.process.join()
            parent_conn.close()
            heartbeat.join()

    def _inputs(self) -> runner.AttemptInput | None:
        claim, dataset = self.claim, self.dataset
        if dataset is None or getattr(dataset, "deleted_at", None) is not None:
            self._write(
                "fail",
                lambda s: store.fail_job(
                    s,
                    job_id=claim.job_id,
                    lease_token=claim.lease_token,
                    error=f"dataset {claim.dataset_id} no longer exists; upload it and resubmit",
                    error_code="dataset_missing",
                ),
            )
            return None
        assert self.worker.runtime_device is not None
        return runner.AttemptInput(
            job_id=claim.job_id,
            name=claim.name,
            network=claim.network,
            training=claim.training,
            features=dataset.features,
            targets=dataset.targets,
            task=dataset.task,
            classes=dataset.classes,
            checkpoint=self.claimed.checkpoint,
            device=self.worker.runtime_device,
            cpu_threads=self.settings.cpu_threads,
        )

    # ------------------------------------------------------------------ following the child

    def _follow(self, conn: Any) -> None:
        grace_deadline: float | None = None
        while True:
            if self.lost.is_set():
                self.process.kill()
                raise LostJob("heartbeat refused: the lease is held by another worker")
            if self.worker.stopping.is_set():
                now = time.monotonic()
                if grace_deadline is None:
                    grace_deadline = now + self.settings.shutdown_grace_seconds
                    self.control.value = runner.STOP_AT_EPOCH_END
                elif now > grace_deadline + KILL_AFTER_GRACE_SECONDS:
                    self.process.kill()
                elif now > grace_deadline:
                    self.control.value = runner.STOP_NOW
            if not conn.poll(0.05):
                if not self.process.is_alive() and not conn.poll(0):
                    self._crashed()
                    return
                continue
            try:
                header, payload = runner.decode(conn.recv_bytes())
            except (EOFError, OSError):
                self.process.join(timeout=5)
                self._crashed()
                return
            if self._handle(header, payload):
                return

    def _handle(self, header: dict[str, Any], payload: bytes) -> bool:
        """Write what the child reported; True when the attempt is over."""
        claim, kind = self.claim, header["kind"]
        fence = {"job_id": claim.job_id, "lease_token": claim.lease_token}
        if kind == "epoch":
            self._write(
                f"record epoch {header['epoch']}",
                lambda s: store.record_epoch(
                    s,
                    **fence,
                    epoch=header["epoch"],
                    values=header["values"],
                    checkpoint=payload,
                    lease_seconds=self.settings.lease_seconds,
                ),
            )
            return False
        if kind == "done":
            self._done(header, payload)
            return True
        if kind == "error":
            if header["retry"]:
                self._retry(header["message"], header["code"])
            else:
                self._write(
                    "fail",
                    lambda s: store.fail_job(
                        s, **fence, error=header["message"], error_code=header["code"]
                    ),
                )
                log.info("%s: job %s failed: %s", self.worker.name, claim.job_id, header["message"])
            return True
        raise ValueError(f"unknown message from the training process: {kind!r}")

    def _done(self, header: dict[str, Any], weights: bytes) -> None:
        claim = self.claim
        fence = {"job_id": claim.job_id, "lease_token": claim.lease_token}
        stopped = header["stopped"]
        if stopped == "shutdown":
            status = self._write("release", lambda s: store.release_job(s, **fence))
            log.info("%s: job %s handed back (%s)", self.worker.name, claim.job_id, status)
            return
        if stopped is None:
            assert self.dataset is not None
            model = Model(
                owner_id=claim.owner_id,
                dataset_id=claim.dataset_id,
                network=claim.network,
                training=claim.training,
                task=self.dataset.task,
                classes=self.dataset.classes,
                weights=weights,
            )
            last = header["last_epoch"]
            last_epoch = None if last is None else (int(last["epoch"]), last["values"])
            try:
                self._write(
                    "finish",
                    lambda s: store.finish_job(s, **fence, model=model, last_epoch=last_epoch),
                )
                log.info("%s: job %s succeeded", self.worker.name, claim.job_id)
                return
            except LostJob:
                pass  # a cancel that came during the last epoch, or a lost lease: see below
        self._write("finish cancelled", lambda s: store.finish_cancelled(s, **fence))
        log.info("%s: job %s cancelled", self.worker.name, claim.job_id)

    def _crashed(self) -> None:
        code = self.process.exitcode
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with code {code}"
        )
        self._retry(
            f"the training process {how} (out of host memory, a crash in native code, or "
            "killed by the system); lower batch_size or the network's size if this repeats",
            "worker_lost",
        )

    def _retry(self, message: str, code: str) -> None:
        claim = self.claim
        backoff = self.settings.retry_backoff_seconds * 2 ** (claim.attempts - 1)
        status = self._write(
            "retry",
            lambda s: store.retry_job(
                s,
                job_id=claim.job_id,
                lease_token=claim.lease_token,
                error=message,
                error_code=code,
                backoff_seconds=backoff,
            ),
        )
        log.warning(
            "%s: job %s attempt %d ended: %s -> %s",
            self.worker.name,
            claim.job_id,
            claim.attempts,
            message,
            status,
        )

    # ------------------------------------------------------------------ heartbeat thread

    def _heartbeat(self) -> None:
        claim, settings = self.claim, self.settings
        while not self.finished.wait(settings.heartbeat_seconds):
            try:
                status = self.worker.write(
                    "heartbeat",
                    lambda s: store.heartbeat(
                        s,
                        job_id=claim.job_id,
                        lease_token=claim.lease_token,
                        lease_seconds=settings.lease_seconds,
                    ),
                    patience=settings.heartbeat_seconds,
                )
            except LostJob as exc:
                if isinstance(exc.__cause__, store.LeaseLost):
                    self.lost.set()
                    return
                continue  # the database is away; the main thread's writes decide
            if status == "cancelling" and self.control.value == runner.RUN:
                self.control.value = runner.CANCEL


def _probe(conn: Any, device: str) -> None:
    from models.train import resolve_device

    try:
        resolved = resolve_device(device)
        name = str(resolved)
        if resolved.type == "cuda":
            import torch

            name += f" ({torch.cuda.get_device_name(resolved)})"
        conn.send_bytes(runner.encode({"ok": True, "device": str(resolved), "name": name}))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a startup error
        conn.send_bytes(runner.encode({"ok": False, "error": str(exc)}))


def probe_device(device: str) -> dict[str, Any]:
    """Resolve the device in a throwaway child: CUDA must never be initialized in the worker
    itself, or the training processes it forks could not use it.
    Returns {"ok": True, "device": "cuda:0", "name": ...} or {"ok": False, "error": ...}."""
    reader, writer = _FORK.Pipe(duplex=False)
    child = _FORK.Process(target=_probe, args=(writer, device), daemon=True)
    child.start()
    writer.close()
    try:
        header, _ = runner.decode(reader.recv_bytes())
    except EOFError:
        header = {"ok": False, "error": f"the device probe exited with code {child.exitcode}"}
    child.join()
    return header


def run_worker(settings: Settings, *, device: str | None = None) -> int:
    """`fitserve worker`: one worker process until SIGTERM/SIGINT."""
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
