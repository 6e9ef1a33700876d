"""The pipe between a worker (the parent, app/queue/parent.py) and its training process (the
child, app/queue/child.py): what each side sends, the shared control word, the attempt's input
and the exit codes. Both sides import this module, and it imports neither side nor torch.

Messages from the child are frames of `4-byte header length | JSON header | optional binary
payload` (checkpoints and weights are safetensors bytes; nothing here is pickled):

    {"kind": "started", "device", "device_reason"}   (training begins: where it runs, as
                                            models.fit decided — "auto" included)
    {"kind": "epoch", "epoch", "values", "ran"}  + models.Checkpoint bytes   (every epoch but the
                                            last; "ran": {"step_mode", "step_mode_reason",
                                            "precision"}, what the steps so far ran as)
    {"kind": "done", "stopped": null, "last_epoch": {"epoch", "values", "ran"} | null}
                                          + models.save_model bytes   (the last epoch rides here,
                                            so its metrics commit with the weights and `succeeded`)
    {"kind": "done", "stopped": "cancelled" | "shutdown"}
    {"kind": "error", "code", "message", "retry"}   (retry: false for failures every attempt
                                            would repeat; child.classify decides)

The device probe (`child.probe_device`) answers with one frame: {"ok": true, "device", "name"}
or {"ok": false, "error"}.

The parent steers the child through one shared integer (the control word), which the child
reads at every batch end — no database query and no syscall per batch.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

# Values of the shared control word, set by the parent.
RUN, CANCEL, STOP_AT_EPOCH_END, STOP_NOW = 0, 1, 2, 3

# A worker that lost a job's lease exits with this (EX_TEMPFAIL) for its supervisor to restart it.
EXIT_LEASE_LOST = 75
# Fault injection, for tests only: a training process whose job is named as this variable says
# exits at once with CRASH_EXIT_CODE, as one killed by the kernel would. Unset in production.
CRASH_ENV = "FITSERVE_TEST_CRASH_JOB_NAME"
CRASH_EXIT_CODE = 86
# Likewise, for tests only: the training process of a job so named raises
# torch.cuda.OutOfMemoryError at its first batch, as a GPU that ran out of memory would.
OOM_ENV = "FITSERVE_TEST_OOM_JOB_NAME"
# And for tests only: a job named this prefix + a key of child.FAULTS raises that GPU error at its
# first batch (bf16 unsupported, an allocator failure, a dtype error, an illegal address).
FAULT_PREFIX_ENV = "FITSERVE_TEST_FAULT_PREFIX"

_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class AttemptInput:
    """Everything one attempt needs, handed over by fork (never serialized)."""

    job_id: str
    name: str | None
    network: dict[str, Any]
    training: dict[str, Any]
    features: bytes  # safetensors {"x": float32 (rows, n_features)} | {"values", "offsets"}
    targets: bytes  # safetensors {"y": int64 (rows,) | float32 (rows, n_outputs)}
    task: str
    classes: list[Any] | None
    checkpoint: bytes | None  # models.Checkpoint bytes to resume from
    device: str  # as models.fit takes it: "auto" (placement decides per job), "cpu", "cuda:N"
    cpu_threads: int | None  # None: torch's default


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return _HEADER.pack(len(head)) + head + payload


def decode(frame: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = _HEADER.unpack_from(frame)
    end = _HEADER.size + length
    return json.loads(frame[_HEADER.size : end]), frame[end:]
