"""The training process: one attempt, in a child the worker forks (the parent's side is
app/queue/parent.py; what travels between them is app/queue/protocol.py).

The worker forks this process per attempt, so a CUDA error, an out-of-memory kill or a crash in
native code ends the attempt and never the worker. The child never touches the database: it
trains and reports over a pipe, and the parent makes every (fenced) write.

Fault injection (tests only): when the FITSERVE_TEST_CRASH_JOB_NAME variable equals the job's
name, the child exits at once with CRASH_EXIT_CODE, as a process killed by the kernel would — a
real way to make a job kill its training process on every attempt; when FITSERVE_TEST_OOM_JOB_NAME
does, its first batch raises torch.cuda.OutOfMemoryError, which travels out of models.fit as a
GPU's would.

Checkpoints are made at epoch ends only: models.Trainer can checkpoint and resume at an epoch
boundary, not within an epoch, so a crash loses at most the epoch in progress.

`probe` resolves the worker's device in a throwaway child of its own (parent.probe_device), for
the same reason: CUDA is never initialized in the worker itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

# torch.optim imports torch._dynamo (and sympy with it) when the first optimizer is built: seconds
# that every forked attempt would pay again. Imported once here, in the worker, it is inherited.
import torch._dynamo  # noqa: F401
from safetensors.numpy import load as st_load

import models
from app.parent_death import die_with_parent
from app.queue.protocol import (
    CANCEL,
    CRASH_ENV,
    CRASH_EXIT_CODE,
    FAULT_PREFIX_ENV,
    OOM_ENV,
    STOP_AT_EPOCH_END,
    STOP_NOW,
    AttemptInput,
    encode,
)
from models.memory import widest
from models.tokens import inputs_from_bytes
from models.train import resolve_device

# fork: the child inherits the imported torch (a fresh interpreter would spend seconds importing
# it per attempt). Safe because the worker never initializes CUDA and runs no thread of its own
# while forking; the child never touches the inherited database connections.
FORK = multiprocessing.get_context("fork")


class _Relay(models.Callback):
    """Reports each epoch (metrics + checkpoint) to the worker and obeys its control word."""

    def __init__(self, conn: Connection, control: Any) -> None:
        self.conn, self.control = conn, control
        self.last_epoch: dict[str, Any] | None = None

    def on_train_begin(self, trainer: models.Trainer) -> None:
        # The device is known only now: with device="auto" models/placement.py has just chosen it.
        # The precision is not: it is read from the first epoch's steps (see `ran`).
        started = {
            "kind": "started",
            "device": str(trainer.device),
            "device_reason": trainer.device_reason,
        }
        self.conn.send_bytes(encode(started))

    def on_batch_end(self, trainer: models.Trainer) -> None:
        if self.control.value in (CANCEL, STOP_NOW):
            trainer.stop_training = True

    def on_epoch_end(self, trainer: models.Trainer, record: models.EpochRecord) -> None:
        if self.control.value in (CANCEL, STOP_NOW):
            return  # a partial epoch: not worth a metrics row or a checkpoint
        values = {"epoch": record.epoch, "values": record.as_dict(), "ran": ran(trainer)}
        # Early stopping has already decided by now whether this epoch is the last.
        if trainer.stop_training or record.epoch >= trainer.config.epochs:
            self.last_epoch = values
            return
        # Checkpoint before any stop is requested, so a resumed run carries on training.
        checkpoint = trainer.checkpoint().to_bytes()
        self.conn.send_bytes(encode({"kind": "epoch", **values}, checkpoint))
        if self.control.value == STOP_AT_EPOCH_END:
            raise models.StopTraining


def ran(trainer: models.Trainer) -> dict[str, str | None]:
    """What the steps so far ran as: the step mode ("eager", "cuda_graph", "cuda_graph
    (emulated)", or "eager (fallback)" after the graph path was given up), why eager when eager,
    and the precision observed from the steps (models/precision.py)."""
    mode, _, reason = trainer.step_mode.partition(": ")
    return {"step_mode": mode, "step_mode_reason": reason or None, "precision": trainer.precision}


# The errors a GPU raises, as torch words them: what the fault hook (tests only) raises at the first
# batch of a job named FAULT_PREFIX + one of these keys, so each travels out of models.fit as a
# GPU's would.
FAULTS: dict[str, Callable[[], BaseException]] = {
    "oom": lambda: torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (raised by the fault hook)"
    ),
    "allocator": lambda: RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    ),
    "bf16_unsupported": lambda: RuntimeError(
        "Current CUDA Device does not support bfloat16. Please switch dtype to float16."
    ),
    "dtype": lambda: RuntimeError(
        "expected m1 and m2 to have the same dtype, but got: c10::BFloat16 != float"
    ),
    "illegal_address": lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
}


class _FaultAtFirstBatch(models.Callback):
    """The fault hook (tests only): raises a GPU's error from inside the training loop."""

    def __init__(self, fault: Callable[[], BaseException]) -> None:
        self.fault = fault

    def on_batch_end(self, trainer: models.Trainer) -> None:
        raise self.fault()


def _oom_message(job: AttemptInput, exc: BaseException) -> str:
    """What ran out, the job's figures, what to shrink; the allocator's own words last, cut
    short (alone they say only "can't allocate memory: you tried to allocate 78643200000 bytes")."""
    text = str(exc)
    # by its words: torch raises OutOfMemoryError for the CPU's allocator too
    gpu = any(word in text for word in ("CUDA", "CUBLAS", "cuDNN"))
    batch = job.training.get("batch_size", 32)
    if batch == "full":
        batch = "full (every training row in one batch)"
    try:
        params = f"{models.count_params(job.network):,}"
        width, layer = widest(job.network)
        where = "the input" if layer is None else f"network.layers[{layer}]"
        widest_text = f"; the widest tensor, {where}, is {width:,} wide"
    except (models.ModelsError, ValueError):  # a spec that doesn't validate: figures unknown
        params, widest_text = "?", ""
    what = "the GPU" if gpu else "the training process (host memory)"
    fix = "lower batch_size or the units of the widest layer" + (
        ", or set precision to bf16" if gpu else ""
    )
    said = " ".join(text.split())
    said = said if len(said) <= 300 else said[:297] + "..."
    return (
        f"{what} ran out of memory training {params} parameters with batch_size {batch}"
        f"{widest_text}: {fix} (this fails the same way on every attempt, so it was not "
        f"retried; the allocator said: {said})"
    )


# RuntimeError texts of failures that repeat on every attempt (torch words them so; there is no
# narrower exception class): the allocator's, bf16 on a GPU without it, and mixed dtypes.
# The CPU's: torch's "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes".
_OUT_OF_MEMORY = (
    "out of memory",
    "STATUS_ALLOC_FAILED",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "can't allocate memory",
    "DefaultCPUAllocator",
)
_BF16_UNSUPPORTED = ("does not support bfloat16", "CUBLAS_STATUS_NOT_SUPPORTED")
_DTYPE = ("expected scalar type", "same dtype", "expected dtype", "dtype mismatch")


def classify(exc: BaseException, job: AttemptInput) -> dict[str, Any]:
    """The error frame for what ended an attempt: deterministic failures (the spec or data can't
    train, out of GPU or host memory — an allocator failure or MemoryError —, bf16 on a GPU
    without it, a dtype error)
    end the job at once with a message that says how to fix it; anything else may be the
    machine's fault and is retried (as are crashes and lost leases, which the parent sees)."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and any(s in text for s in _OUT_OF_MEMORY)
    ):
        return _failed("out_of_memory", _oom_message(job, exc))
    if isinstance(exc, models.SpecError) and exc.loc[-1:] == ("precision",):
        return _failed("precision_unsupported", text)
    if isinstance(exc, models.ModelsError | ValueError):
        return _failed("training_error", text)  # the spec or data can't train
    if isinstance(exc, RuntimeError) and any(s in text for s in _BF16_UNSUPPORTED):
        return _failed(
            "precision_unsupported",
            f"this GPU cannot train in bf16 ({text}); use precision fp32 or tf32",
        )
    if isinstance(exc, RuntimeError | TypeError) and any(s in text for s in _DTYPE):
        return _failed(
            "dtype_error",
            f"a dtype error in the training step, the same on every attempt ({text}); "
            "train with precision fp32",
        )
    return {
        "kind": "error",
        "code": "training_crashed",
        "retry": True,
        "message": f"{type(exc).__name__}: {exc}",
    }


def _failed(code: str, message: str) -> dict[str, Any]:
    return {"kind": "error", "code": code, "retry": False, "message": message}


def run_attempt(conn: Connection, control: Any, job: AttemptInput, parent_pid: int) -> None:
    """The training process's entry point: train, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which steers us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(signal.SIGKILL, parent_pid=parent_pid)  # a killed worker takes us with it
    if job.name is not None and os.environ.get(CRASH_ENV) == job.name:
        os._exit(CRASH_EXIT_CODE)
    if job.cpu_threads:
        torch.set_num_threads(job.cpu_threads)
    try:
        header, payload = _train(conn, control, job)
    except Exception as exc:  # noqa: BLE001 - every failure is reported; classify says how
        header, payload = classify(exc, job), b""
    conn.send_bytes(encode(header, payload))
    conn.close()


def _train(conn: Connection, control: Any, job: AttemptInput) -> tuple[dict[str, Any], bytes]:
    x = inputs_from_bytes(job.features)  # a float32 matrix, or documents as token lists
    y = st_load(job.targets)["y"]
    if job.task == "regression" and y.ndim == 1:
        y = y.reshape(-1, 1)
    resume = models.Checkpoint.from_bytes(job.checkpoint) if job.checkpoint else None
    relay = _Relay(conn, control)
    callbacks: list[models.Callback] = [relay]
    if job.name is not None and os.environ.get(OOM_ENV) == job.name:
        callbacks.append(_FaultAtFirstBatch(FAULTS["oom"]))
    prefix = os.environ.get(FAULT_PREFIX_ENV)
    if prefix and job.name is not None and job.name.startswith(prefix):
        callbacks.append(_FaultAtFirstBatch(FAULTS[job.name.removeprefix(prefix)]))
    result = models.fit(
        job.network,
        job.training,
        x,
        np.asarray(y),
        device=job.device,
        callbacks=callbacks,
        resume=resume,
    )
    if relay.last_epoch is None and result.stopped_epoch is not None:
        # Stopped before its last epoch: by a cancel, or by the worker shutting down.
        stopped = "cancelled" if control.value == CANCEL else "shutdown"
        return {"kind": "done", "stopped": stopped}, b""
    weights = models.save_model(
        result, result.network, extra={"task": job.task, "classes": job.classes}
    )
    return {"kind": "done", "stopped": None, "last_epoch": relay.last_epoch}, weights


def probe(conn: Connection, device: str) -> None:
    """The device probe's entry point (app/queue/parent.py: probe_device forks it)."""
    try:
        resolved = resolve_device(device)
        name = str(resolved)
        if resolved.type == "cuda":
            name += f" ({torch.cuda.get_device_name(resolved)})"
        conn.send_bytes(encode({"ok": True, "device": str(resolved), "name": name}))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a startup error
        conn.send_bytes(encode({"ok": False, "error": str(exc)}))
