"""The worker never forks a training process once CUDA is initialised in its own process.

A child forked from a process with an initialised CUDA context fails its first CUDA call on every
attempt ("Cannot re-initialize CUDA in forked subprocess"). The worker checks
torch.cuda.is_initialized() before every fork (the device probe, each attempt) and before
claiming a job, and sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so looking for a GPU does not initialise
the driver. Without a GPU CUDA can never be initialised here, so the refusal is checked by making
torch.cuda.is_initialized answer True in an in-process worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from queue_kit import JobState, MakeJob

from app.config import Settings
from app.queue import parent
from app.queue.parent import probe_device
from app.queue.worker import Worker, run_worker


def test_the_check_holds_in_a_process_that_imported_torch_and_trained() -> None:
    import models

    models.fit(
        {"layers": [{"type": "dense", "units": 2, "input_dim": 3}]},
        {"loss": "mse", "epochs": 1},
        [[0.0, 1.0, 2.0]] * 4,
        [[1.0, 0.0]] * 4,
        device="cpu",
    )
    assert not torch.cuda.is_initialized()
    parent.check_fork_safe()  # raises if it does not hold
    assert probe_device("cpu")["ok"]


def test_a_worker_with_cuda_initialised_forks_nothing_and_claims_nothing(
    database_url: str, make_job: MakeJob, job_state: JobState, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = make_job("waits")
    worker = Worker(Settings(database_url=database_url, poll_seconds=0.05), device="cpu")
    worker.runtime_device = "cpu"  # as run_worker's probe leaves it
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    try:
        with pytest.raises(RuntimeError, match="CUDA is initialised in the worker process"):
            probe_device("cpu")
        with pytest.raises(RuntimeError, match="training processes it forks could not use"):
            worker.run(max_jobs=1, exit_when_idle=True)
    finally:
        worker.engine.dispose()
    job = job_state(job_id)
    assert (job.status, job.attempts, job.claimed_by) == ("queued", 0, None)


def test_a_worker_process_asks_nvml_rather_than_cuda_whether_a_gpu_is_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(parent.NVML_CHECK_ENV, raising=False)
    empty = f"sqlite:///{tmp_path}/empty.db"  # no tables: run_worker returns 2 after its set-up
    assert run_worker(Settings(database_url=empty)) == 2
    assert os.environ[parent.NVML_CHECK_ENV] == "1"
