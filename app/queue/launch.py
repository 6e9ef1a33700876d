"""What other processes need to know about a worker, importable without torch: exit codes, the
fault-injection hooks' names, and an entry point for starting a worker with multiprocessing."""

from __future__ import annotations

import ctypes
import logging
import signal

from app.config import Settings

# A worker that lost a job's lease exits with this (EX_TEMPFAIL) for its supervisor to restart it.
EXIT_LEASE_LOST = 75
# Fault injection, for tests only: a training process whose job is named as this variable says
# exits at once with CRASH_EXIT_CODE, as one killed by the kernel would. Unset in production.
CRASH_ENV = "FITSERVE_TEST_CRASH_JOB_NAME"
CRASH_EXIT_CODE = 86
# Likewise, for tests only: the training process of a job so named raises
# torch.cuda.OutOfMemoryError at its first batch, as a GPU that ran out of memory would.
OOM_ENV = "FITSERVE_TEST_OOM_JOB_NAME"


def worker_process(settings: Settings, log_file: str | None = None) -> None:
    """A worker as a multiprocessing child (tests, bench/): the same `run_worker` as `fitserve
    worker`, dying with its parent, its exit code the process's."""
    from app.queue.worker import run_worker

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the parent
    except (OSError, AttributeError):
        pass
    logging.basicConfig(
        filename=log_file,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    raise SystemExit(run_worker(settings))
