"""What other processes need to know about a worker, importable without torch: exit codes, the
fault-injection hooks' names, and an entry point for starting a worker with multiprocessing."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

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


# torch.cuda.is_available() then asks NVML instead of initialising the CUDA driver, so a worker
# process that checks for a GPU stays safe to fork (torch docs: "CUDA environment variables").
NVML_CHECK_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"


def prepare_worker_process() -> None:
    """Set, before anything in this worker process can look for a GPU, what keeps it fork-safe."""
    os.environ.setdefault(NVML_CHECK_ENV, "1")


def check_fork_safe() -> None:
    """Raise unless this process may fork a training process: CUDA must not be initialised in it,
    or the child's first CUDA call fails ("Cannot re-initialize CUDA in forked subprocess") on
    every attempt. Reads torch only if something has imported it (this module stays torch-free)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            "CUDA is initialised in the worker process, so the training processes it forks could "
            "not use the GPU; the worker must leave every CUDA call to its children"
        )


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
