"""One claimed job on a worker, the parent's side of the pipe: the training child, the heartbeat
thread, the fenced writes (the child's side is app/queue/child.py; the frames between them,
app/queue/protocol.py).

The parent forks `child.run_attempt` for each attempt and follows its reports: the device
training started on with `set_runtime` (device "auto" is decided in the child, by models.fit),
each epoch with `record_epoch`, the end with `finish_job` / `finish_cancelled` / `release_job`,
an error with `fail_job` or `retry_job`, a child that dies without a word with `retry_job`.
Every write names the claim's lease token; one that is refused raises LostJob, the child is
killed, and nothing more is written. The heartbeat thread extends the lease, and turns a
`cancelling` status into the control word the child reads after every batch.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from app.config import Settings
from app.job_status import JobStatus
from app.queue import child, store
from app.queue.protocol import (
    CANCEL,
    RUN,
    STOP_AT_EPOCH_END,
    STOP_NOW,
    AttemptInput,
    decode,
)
from app.studies import conduct
from app.tables import Dataset, Model

log = logging.getLogger("fitserve.worker")
T = TypeVar("T")

# torch.cuda.is_available() then asks NVML instead of initialising the CUDA driver, so a worker
# process that checks for a GPU stays safe to fork (torch docs: "CUDA environment variables").
NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"

# A cancel request is looked for this often (a read), between the heartbeats' lease extensions.
CANCEL_CHECK_SECONDS = 1.0
# After the grace period the child stops at its next batch; this long after, it is killed.
KILL_AFTER_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Claimed:
    claim: store.Claim
    dataset: Dataset | None
    checkpoint: bytes | None  # models.Checkpoint bytes to resume from
    device: str | None  # the device the claim recorded on the job row (None: "auto", unplaced)


class LostJob(Exception):
    """This worker may not write to the job any more (its lease is gone or the database is)."""


class Write(Protocol):
    """Runs a store write in its own transaction, retrying transient database errors for up to
    `patience` seconds; a refused lease or a database gone for longer raises LostJob."""

    def __call__(self, what: str, fn: Callable[[Session], T], *, patience: float) -> T: ...


class Attempt:
    """One claimed job on this worker: a training child, a heartbeat thread, fenced writes.

    `write` is the worker's retrying writer, `stopping` its shutdown signal, `device` the device
    handed to models.fit, `worker_name` the name its log lines carry."""

    def __init__(
        self,
        claimed: Claimed,
        *,
        write: Write,
        stopping: threading.Event,
        settings: Settings,
        device: str,
        worker_name: str,
    ) -> None:
        self.claim, self.claimed, self.dataset = claimed.claim, claimed, claimed.dataset
        self.write, self.stopping, self.settings = write, stopping, settings
        self.device, self.worker_name = device, worker_name
        self.control = child.FORK.Value("i", RUN, lock=False)  # shared memory, read per batch
        self.lost = threading.Event()
        self.finished = threading.Event()
        self.process: Any = None
        # A study's trial reports each epoch to its pruner; once pruned, later epochs the child
        # sends before it stops are not recorded (the trial ends at the pruned epoch).
        self.is_trial = False
        self.pruned = False

    @property
    def patience(self) -> float:
        # Writes are fenced, so retrying past the lease is safe; a worker cut off for this long
        # gives the job up to whoever the database hands it next.
        return max(3 * self.settings.lease_seconds, 10.0)

    def _write(self, what: str, fn: Callable[[Session], T]) -> T:
        return self.write(what, fn, patience=self.patience)

    def run(self) -> None:
        claim = self.claim
        self.is_trial = self._write(
            "study trial?", lambda s: conduct.is_trial(s, job_id=claim.job_id)
        )
        try:
            self._run()
        finally:
            if self.is_trial:  # the next trial is asked for as soon as this one ends
                self._advance_study()

    def _run(self) -> None:
        claim = self.claim
        inputs = self._inputs()
        if inputs is None:
            return
        check_fork_safe()
        parent_conn, child_conn = child.FORK.Pipe(duplex=False)
        self.process = child.FORK.Process(
            target=child.run_attempt,
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

    def _inputs(self) -> AttemptInput | None:
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
        return AttemptInput(
            job_id=claim.job_id,
            name=claim.name,
            network=claim.network,
            training=claim.training,
            features=dataset.features,
            targets=dataset.targets,
            task=dataset.task,
            classes=dataset.classes,
            checkpoint=self.claimed.checkpoint,
            device=self.device,
            cpu_threads=self.settings.cpu_threads,
        )

    # ------------------------------------------------------------------ following the child

    def _follow(self, conn: Any) -> None:
        grace_deadline: float | None = None
        while True:
            if self.lost.is_set():
                self.process.kill()
                raise LostJob("heartbeat refused: the lease is held by another worker")
            if self.stopping.is_set():
                now = time.monotonic()
                if grace_deadline is None:
                    grace_deadline = now + self.settings.shutdown_grace_seconds
                    self.control.value = STOP_AT_EPOCH_END
                elif now > grace_deadline + KILL_AFTER_GRACE_SECONDS:
                    self.process.kill()
                elif now > grace_deadline:
                    self.control.value = STOP_NOW
            if not conn.poll(0.05):
                if not self.process.is_alive() and not conn.poll(0):
                    self._ended_without_report()
                    return
                continue
            try:
                header, payload = decode(conn.recv_bytes())
            except (EOFError, OSError):
                self.process.join(timeout=5)
                self._ended_without_report()
                return
            if self._handle(header, payload):
                return

    def _handle(self, header: dict[str, Any], payload: bytes) -> bool:
        """Write what the child reported; True when the attempt is over."""
        claim, kind = self.claim, header["kind"]
        fence: dict[str, Any] = {"job_id": claim.job_id, "lease_token": claim.lease_token}
        if kind == "started":
            device = header["device"]
            log.info(
                "%s: job %s trains on %s (%s)",
                self.worker_name,
                claim.job_id,
                device,
                header["device_reason"],
            )
            if device != self.claimed.device:  # device "auto": placed by models.fit just now
                self._write("set runtime", lambda s: store.set_runtime(s, **fence, device=device))
            return False
        if kind == "epoch":
            if self.pruned:
                return False
            self._write(
                f"record epoch {header['epoch']}",
                lambda s: store.record_epoch(
                    s,
                    **fence,
                    epoch=header["epoch"],
                    values=header["values"],
                    checkpoint=payload,
                    lease_seconds=self.settings.lease_seconds,
                    ran=header.get("ran"),
                ),
            )
            if self.is_trial and self._write(
                "report to the study",
                lambda s: conduct.report_epoch(s, job_id=claim.job_id, epoch=header["epoch"]),
            ):
                self.pruned = True
                self.control.value = CANCEL
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
                log.info("%s: job %s failed: %s", self.worker_name, claim.job_id, header["message"])
            return True
        raise ValueError(f"unknown message from the training process: {kind!r}")

    def _done(self, header: dict[str, Any], weights: bytes) -> None:
        claim = self.claim
        fence: dict[str, Any] = {"job_id": claim.job_id, "lease_token": claim.lease_token}
        stopped = header["stopped"]
        if stopped == "shutdown":
            status = self._write("release", lambda s: store.release_job(s, **fence))
            log.info("%s: job %s handed back (%s)", self.worker_name, claim.job_id, status)
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
            ran = None if last is None else last.get("ran")
            try:
                self._write(
                    "finish",
                    lambda s: store.finish_job(
                        s, **fence, model=model, last_epoch=last_epoch, ran=ran
                    ),
                )
                log.info("%s: job %s succeeded", self.worker_name, claim.job_id)
                return
            except LostJob:
                pass  # a cancel that came during the last epoch, or a lost lease: see below
        self._write("finish cancelled", lambda s: store.finish_cancelled(s, **fence))
        log.info("%s: job %s cancelled", self.worker_name, claim.job_id)

    def _ended_without_report(self) -> None:
        if self.stopping.is_set() and self.control.value == STOP_NOW:
            # Killed by us after the grace period: the shutdown's fault, not the job's.
            status = self._write(
                "release",
                lambda s: store.release_job(
                    s, job_id=self.claim.job_id, lease_token=self.claim.lease_token
                ),
            )
            log.info("%s: job %s handed back (%s)", self.worker_name, self.claim.job_id, status)
            return
        self._crashed()

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
            self.worker_name,
            claim.job_id,
            claim.attempts,
            message,
            status,
        )

    def _advance_study(self) -> None:
        try:
            self.write(
                "advance the study",
                lambda s: conduct.advance_for_job(
                    s, job_id=self.claim.job_id, settings=self.settings
                ),
                patience=self.patience,
            )
        except (LostJob, sa_exc.IntegrityError) as exc:  # the sweep will do it
            log.warning(
                "%s: could not advance the study of job %s: %s",
                self.worker_name,
                self.claim.job_id,
                exc,
            )

    # ------------------------------------------------------------------ heartbeat thread

    def _heartbeat(self) -> None:
        """Extend the lease every heartbeat; in between, look at the job's status once a second,
        so a cancel takes effect within about a second even with a long heartbeat."""
        claim, settings = self.claim, self.settings
        fence: dict[str, Any] = {"job_id": claim.job_id, "lease_token": claim.lease_token}
        limit, limit_error = time_limit(claim.training, settings.max_job_seconds)
        next_beat = time.monotonic() + settings.heartbeat_seconds
        while not self.finished.wait(min(settings.heartbeat_seconds, CANCEL_CHECK_SECONDS)):
            beat = time.monotonic() >= next_beat
            try:
                if beat:
                    status = self.write(
                        "heartbeat",
                        lambda s: store.heartbeat(
                            s,
                            **fence,
                            lease_seconds=settings.lease_seconds,
                            max_job_seconds=limit,
                            time_limit_error=limit_error,
                        ),
                        patience=settings.heartbeat_seconds,
                    )
                    next_beat = time.monotonic() + settings.heartbeat_seconds
                else:
                    status = self.write(
                        "status", lambda s: store.job_status(s, **fence), patience=0
                    )
            except LostJob as exc:
                if isinstance(exc.__cause__, store.LeaseLost):
                    self.lost.set()
                    return
                continue  # the database is away; the main thread's writes decide
            if status == JobStatus.CANCELLING and self.control.value == RUN:
                self.control.value = CANCEL


JOB_BUDGET_ERROR = (
    "the job ran past its own time budget of {seconds:,.0f} s (training.max_seconds), its "
    "attempts together; raise max_seconds (up to the server's limit, FITSERVE_MAX_JOB_SECONDS), "
    "or train for fewer epochs or on less data"
)


def time_limit(training: dict[str, Any], server_limit: float | None) -> tuple[float | None, str]:
    """The seconds a job may run on workers, its attempts together (`store.heartbeat` checks its
    run_seconds) — the job's training.max_seconds when it is the tighter, else the server's
    FITSERVE_MAX_JOB_SECONDS — and the error that names which one ran out."""
    budget = training.get("max_seconds")
    if budget is not None and (server_limit is None or float(budget) < server_limit):
        return float(budget), JOB_BUDGET_ERROR.format(seconds=float(budget))
    return server_limit, store.TIME_LIMIT_ERROR.format(seconds=server_limit or 0.0)


def prepare_worker_process() -> None:
    """Set, before anything in this worker process can look for a GPU, what keeps it fork-safe."""
    os.environ.setdefault(NVML_CHECK_ENV, "1")


def check_fork_safe() -> None:
    """Raise unless this process may fork a training process: CUDA must not be initialised in it,
    or the child's first CUDA call fails ("Cannot re-initialize CUDA in forked subprocess") on
    every attempt. Reads torch only if something has imported it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            "CUDA is initialised in the worker process, so the training processes it forks could "
            "not use the GPU; the worker must leave every CUDA call to its children"
        )


def probe_device(device: str) -> dict[str, Any]:
    """Resolve the device in a throwaway child (child.probe): CUDA must never be initialized in
    the worker itself, or the training processes it forks could not use it.
    Returns {"ok": True, "device": "cuda:0", "name": ...} or {"ok": False, "error": ...}."""
    check_fork_safe()
    reader, writer = child.FORK.Pipe(duplex=False)
    prober = child.FORK.Process(target=child.probe, args=(writer, device), daemon=True)
    prober.start()
    writer.close()
    try:
        header, _ = decode(reader.recv_bytes())
    except EOFError:
        header = {"ok": False, "error": f"the device probe exited with code {prober.exitcode}"}
    prober.join()
    return header
