"""A training step too large for memory fails the job at once, with a message that says what to
shrink — from a real allocation failure, not a mock. Before, torch's CPU allocator error
("DefaultCPUAllocator: can't allocate memory: you tried to allocate ... bytes") was taken for a
crash: the job ran three times and ended with that raw text.

The job is the issue's attack made larger than any machine: batch_size "full" through 65,536
units on 4,194,304 rows asks for one 1 TiB tensor, which Linux refuses at once (heuristic
overcommit never grants a single allocation beyond RAM + swap). It is queued directly: the
submit check (tests/api/test_activation_memory.py) would refuse it before a worker saw it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from queue_kit import JobState, MakeJob, StartWorker, claims_of, finished, metrics_of, wait_for
from sqlalchemy.orm import Session, sessionmaker

from app.dataset_codec import ParsedDataset, encode_arrays
from app.tables import Dataset

ROWS = 1 << 22  # x 65,536 units x 4 bytes: one (rows, units) float32 tensor of 1 TiB


def _overcommit_mode() -> str:
    path = Path("/proc/sys/vm/overcommit_memory")
    return path.read_text().strip() if path.exists() else "unknown"


@pytest.mark.skipif(
    _overcommit_mode() == "1",
    reason="vm.overcommit_memory=1 grants any allocation; the step would be OOM-killed instead",
)
def test_a_step_that_cannot_be_allocated_fails_at_once_saying_what_to_shrink(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    x = np.linspace(-1, 1, ROWS, dtype=np.float32).reshape(-1, 1)
    parsed = ParsedDataset(
        task="regression", x=x, y=x.copy(), feature_names=["x"], target_names=["y"], classes=None
    )
    encoded = encode_arrays(parsed)
    with sessions.begin() as session:
        dataset = Dataset(
            name="long", task="regression", rows=ROWS, n_features=1, n_outputs=1,
            feature_names=["x"], target_names=["y"], classes=None, features=bytes(encoded.features),
            targets=encoded.targets, sha256=encoded.sha256,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    network = {
        "layers": [
            {"type": "dense", "units": 65_536, "activation": "relu", "input_dim": 1},
            {"type": "dense", "units": 1},
        ]
    }
    training = {"loss": "mse", "optimizer": "sgd", "batch_size": "full", "epochs": 1, "seed": 0}
    job_id = make_job("too wide", network=network, training=training, dataset_id=dataset_id)
    worker = start_worker()

    job = wait_for(finished(job_state, job_id), timeout=120, what="the job to fail")

    assert (job.status, job.error_code, job.attempts) == ("failed", "out_of_memory", 1), (
        job.error,
        worker.logs(),
    )
    assert [c.outcome for c in claims_of(sessions, job_id)] == ["failed"]  # not retried
    message = job.error or ""
    # What ran out and the job's own figures come first, then what to shrink ...
    assert message.startswith("the training process (host memory) ran out of memory"), message
    for words in (
        "196,609 parameters",
        "batch_size full",
        "network.layers[0], is 65,536 wide",
        "lower batch_size or the units of the widest layer",
    ):
        assert words in message, (words, message)
    # ... and the allocator's own words only after that, as evidence.
    assert message.index("can't allocate memory") > message.index("lower batch_size"), message
    assert metrics_of(sessions, job_id) == []
    assert worker.process.is_alive()
