"""Through real workers on SQLite and Postgres: which failures are retried, and what is recorded
about how a job's steps ran.

Failures every attempt would repeat — the spec can't train, out of GPU memory or an allocator
failure, bf16 on a GPU without it, a dtype error — end the job `failed` on its first attempt with
a message that says how to fix it; a crash (here: the error an illegal memory access raises) is
retried. The GPU errors are raised by the training process's fault hook (tests only) as torch
raises them on a GPU (app/queue/child.py: FAULTS), so they travel the real path out of models.fit.

The job and each epoch row record the step mode, why eager when eager, and the precision observed
from the steps: fp32 eager on the CPU; and, in a worker whose CPU steps run under bf16 autocast
and through the CUDA-graph path's body (the test switches FITSERVE_TEST_CPU_BF16 and
FITSERVE_CUDA_GRAPHS=emulate), bf16 and cuda_graph (emulated) — observed, not copied.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric
from queue_kit import (
    FAULT_JOB_PREFIX,
    IRIS_NETWORK,
    WORKER_SETTINGS,
    JobState,
    MakeJob,
    StartWorker,
    WorkerHandle,
    claims_of,
    finished,
    iris_dataset_row,
    iris_training,
    metrics_of,
    wait_for,
    worker_process,
)
from safetensors.numpy import load as st_load
from sqlalchemy.orm import Session, sessionmaker

import models
from app.config import Settings
from app.prometheus import DatabaseCollector
from app.queue import child, store
from app.services.jobs import job_view
from app.tables import FALLBACK_STEP_MODE, Job

# (job name, network, expected error code, words the message must contain)
DETERMINISTIC = [
    (
        "spec",
        {"layers": [{"type": "dense", "units": 3, "activation": "softmax", "input_dim": 5}]},
        "training_error",
        "input_dim",
    ),
    (FAULT_JOB_PREFIX + "bf16_unsupported", None, "precision_unsupported",
     "use precision fp32 or tf32"),
    (FAULT_JOB_PREFIX + "allocator", None, "out_of_memory", "lower batch_size"),
    (FAULT_JOB_PREFIX + "oom", None, "out_of_memory", "lower batch_size"),
    (FAULT_JOB_PREFIX + "dtype", None, "dtype_error", "train with precision fp32"),
]  # fmt: skip


def test_deterministic_failures_fail_at_once_and_a_crash_is_retried(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    ids = {name: make_job(name, network=network) for name, network, _, _ in DETERMINISTIC}
    crash = make_job(FAULT_JOB_PREFIX + "illegal_address", max_attempts=2)
    after = make_job("after them")
    worker = start_worker()

    for name, _, code, words in DETERMINISTIC:
        job = wait_for(finished(job_state, ids[name]), timeout=60, what=f"{name} to end")
        assert (job.status, job.error_code, job.attempts) == ("failed", code, 1), (
            name,
            job.error,
            worker.logs(),
        )
        assert words in (job.error or ""), (name, job.error)
        assert [c.outcome for c in claims_of(sessions, ids[name])] == ["failed"], name
    job = wait_for(finished(job_state, crash), timeout=60, what="the crashing job to end")
    assert (job.status, job.error_code, job.attempts) == ("failed", "training_crashed", 2)
    assert "illegal memory access" in (job.error or "")
    assert [c.outcome for c in claims_of(sessions, crash)] == ["crashed", "crashed"]
    assert wait_for(finished(job_state, after), timeout=60, what="the last job").status == (
        "succeeded"
    )


def test_what_the_steps_ran_as_is_recorded_on_the_job_and_its_epochs(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job("cpu", training=iris_training(epochs=3, precision="bf16"))
    worker = start_worker()
    job = wait_for(finished(job_state, job_id), timeout=60, what="the job to finish")
    assert job.status == "succeeded", (job.error, worker.logs())
    # asked for bf16; the CPU trained in fp32, and that is what is recorded
    assert (job.device, job.precision, job.step_mode, job.step_mode_reason) == (
        "cpu",
        "fp32",
        "eager",
        "not on CUDA",
    )
    rows = metrics_of(sessions, job_id)
    assert [(m.epoch, m.step_mode, m.step_mode_reason, m.precision) for m in rows] == [
        (e, "eager", "not on CUDA", "fp32") for e in (1, 2, 3)
    ]
    # as the API shows them: on the job and on its latest epoch's metrics
    view = job_view(job, rows[-1])
    assert view.metrics is not None
    assert (view.precision, view.step_mode, view.metrics.step_mode, view.metrics.precision) == (
        "fp32",
        "eager",
        "eager",
        "fp32",
    )


NORM_NETWORK: dict[str, Any] = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "batch_normalization"},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "layer_normalization"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


@pytest.fixture
def bf16_graph_worker(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkerHandle]:
    """A worker forked from this process with CPU bf16 autocast and the emulated graph path on
    (the session's forkserver took its environment before these were set)."""
    monkeypatch.setenv("FITSERVE_TEST_CPU_BF16", "1")
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", "emulate")
    settings = Settings(database_url=database_url, **WORKER_SETTINGS)
    log = tmp_path / "worker.log"
    process = multiprocessing.get_context("fork").Process(
        target=worker_process, args=(settings, str(log)), name="bf16-graph-worker"
    )
    process.start()
    handle = WorkerHandle(process, log)
    yield handle
    if process.is_alive():
        handle.signal(signal.SIGKILL)
    process.join(10)


def test_observed_bf16_and_the_graph_path_are_recorded(
    bf16_graph_worker: WorkerHandle,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    # 12 full batches an epoch x 4 epochs: enough steps for the graph path
    training = iris_training(epochs=4, precision="bf16", batch_size=10)
    job_id = make_job("bf16", network=NORM_NETWORK, training=training)
    job = wait_for(finished(job_state, job_id), timeout=90, what="the job to finish")
    assert job.status == "succeeded", (job.error, bf16_graph_worker.logs())
    assert (job.precision, job.step_mode, job.step_mode_reason) == (
        "bf16",
        "cuda_graph (emulated)",
        None,
    )
    rows = metrics_of(sessions, job_id)
    assert [(m.step_mode, m.precision) for m in rows] == [("cuda_graph (emulated)", "bf16")] * 4


class _HalveLearningRateAfter(models.Callback):
    def __init__(self) -> None:
        self.ran: list[dict[str, str | None]] = []

    def on_epoch_end(self, trainer: models.Trainer, record: models.EpochRecord) -> None:
        self.ran.append(child.ran(trainer))
        if record.epoch == 2:
            for group in trainer.optimizer.param_groups:
                group["lr"] /= 2


def _fallbacks(sessions: sessionmaker[Session]) -> float:
    found: list[Metric] = [
        m
        for m in DatabaseCollector(sessions).collect()
        if m.name == "fitserve_cuda_graph_fallbacks"
    ]
    assert len(found) == 1 and found[0].type == "counter"
    return found[0].samples[0].value


def test_a_fallback_is_recorded_with_its_reason_and_counted(
    iris_id: str, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real fallback: the graph path (emulated) gives up when the learning rate changes after
    # capture. What the training process reports for it:
    monkeypatch.setenv("FITSERVE_CUDA_GRAPHS", "emulate")
    watch = _HalveLearningRateAfter()
    x, y = _iris()
    models.fit(
        IRIS_NETWORK, iris_training(epochs=4, batch_size=10), x, y, device="cpu", callbacks=[watch]
    )
    assert watch.ran[0] == {
        "step_mode": "cuda_graph (emulated)",
        "step_mode_reason": None,
        "precision": "fp32",
    }
    fallback = watch.ran[-1]
    assert fallback == {
        "step_mode": FALLBACK_STEP_MODE,
        "step_mode_reason": "the learning rate changed after capture",
        "precision": "fp32",
    }
    # ... recorded through the store as the worker records it, and counted on /metrics
    assert _fallbacks(sessions) == 0
    with sessions.begin() as session:
        job = store.enqueue_job(
            session,
            job=Job(
                dataset_id=iris_id,
                network=IRIS_NETWORK,
                training=iris_training(epochs=4),
                epochs=4,
            ),
        )
        job_id = job.id
    with sessions.begin() as session:
        claim = store.claim_next_job(session, worker="w", lease_seconds=30)
        assert claim is not None and claim.job_id == job_id
    for epoch, ran in enumerate(watch.ran[:2], start=1):
        with sessions.begin() as session:
            store.record_epoch(
                session,
                job_id=job_id,
                lease_token=claim.lease_token,
                epoch=epoch,
                values={"loss": 1.0},
                checkpoint=b"x",
                lease_seconds=30,
                ran=ran if epoch == 1 else fallback,
            )
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        assert (row.step_mode, row.step_mode_reason) == (
            FALLBACK_STEP_MODE,
            "the learning rate changed after capture",
        )
    assert _fallbacks(sessions) == 1


def _iris() -> tuple[Any, Any]:
    row = iris_dataset_row()
    return st_load(row.features)["x"], st_load(row.targets)["y"]
