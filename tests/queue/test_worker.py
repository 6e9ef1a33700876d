"""The worker on SQLite and Postgres: training real jobs, cancellation, poison jobs, SIGTERM."""

from __future__ import annotations

import signal

import numpy as np
from queue_kit import (
    OOM_JOB_NAME,
    POISON_JOB_NAME,
    JobState,
    MakeJob,
    StartWorker,
    checkpoints_of,
    claims_of,
    finished,
    iris_training,
    metrics_of,
    wait_for,
)
from safetensors.numpy import load as st_load
from sqlalchemy.orm import Session, sessionmaker

import models
from app.dataset_codec import build_dataset, encode_arrays, sequences_tokens
from app.queue import store
from app.queue.protocol import CRASH_EXIT_CODE
from app.tables import Dataset, Model


def test_a_worker_trains_a_queued_job_and_stores_the_model(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    job_id = make_job("iris", training=iris_training(epochs=5))
    worker = start_worker()

    job = wait_for(finished(job_state, job_id), timeout=60, what="the job to finish")

    assert job.status == "succeeded", (job.error, worker.logs())
    assert (job.attempts, job.epoch, job.device, job.precision) == (1, 5, "cpu", "fp32")
    metrics = metrics_of(sessions, job_id)
    assert [(m.epoch, m.lease_token) for m in metrics] == [(e, 1) for e in range(1, 6)]
    assert all(m.loss == m.values["loss"] and 0 <= m.values["accuracy"] <= 1 for m in metrics)
    losses = [m.loss for m in metrics]
    assert None not in losses and losses[-1] < losses[0]  # type: ignore[operator]  # it learned
    with sessions() as session:
        model = session.get(Model, job.model_id)
        dataset = session.get(Dataset, model.dataset_id if model else None)
        assert model is not None and dataset is not None
        assert model.job_id == job_id and model.task == "classification"
        assert model.classes == dataset.classes
        assert model.metrics == metrics[-1].values  # the final epoch's metrics row
        weights = st_load(model.weights)
    # 4 -> 8 -> 3: Keras counts 4*8 + 8 + 8*3 + 3 = 67 parameters.
    assert sum(int(np.prod(a.shape)) for k, a in weights.items() if k.startswith("model/")) == 67
    assert [(c.outcome, c.ended_at is not None) for c in claims_of(sessions, job_id)] == [
        ("succeeded", True)
    ]
    assert checkpoints_of(sessions, job_id) == 0  # deleted with `succeeded`; the model stays
    assert worker.stop() == 0  # SIGTERM while idle: a clean exit


def test_device_auto_is_placed_by_fit_and_the_device_used_is_recorded(
    start_worker: StartWorker, make_job: MakeJob, job_state: JobState
) -> None:
    # bf16 asked for: the row says so until training starts, then what the CPU really ran (fp32)
    job_id = make_job("auto", training=iris_training(epochs=3, precision="bf16"))
    worker = start_worker(device="auto")

    job = wait_for(finished(job_state, job_id), timeout=60, what="the job to finish")

    assert job.status == "succeeded", (job.error, worker.logs())
    assert (job.device, job.precision) == ("cpu", "fp32")
    # Placed by models/placement.py inside the training process, not resolved by the worker:
    # the reason is FitResult.device_reason's ("auto: CUDA is not available" here, or the
    # measured CPU probe's verdict on a machine with a GPU).
    assert f"job {job_id} trains on cpu (auto: " in worker.logs()


def test_a_cancelled_queued_job_is_never_claimed(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    cancelled, after = make_job("cancelled"), make_job("after")
    with sessions.begin() as session:
        assert store.cancel_job(session, job_id=cancelled).status == "cancelled"
    worker = start_worker()

    job = wait_for(finished(job_state, after), timeout=60, what="the job behind it to finish")

    assert job.status == "succeeded", worker.logs()
    assert job_state(cancelled).status == "cancelled"
    assert claims_of(sessions, cancelled) == []


def test_cancelling_a_running_job_stops_it_at_a_batch_boundary(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    long_job = make_job("long", training=iris_training(epochs=2000, batch_size=5))
    worker = start_worker(heartbeat_seconds=5.0, lease_seconds=15.0)  # production-like
    wait_for(lambda: job_state(long_job).epoch >= 1, timeout=60, what="the first epoch")
    assert checkpoints_of(sessions, long_job) == 1

    with sessions.begin() as session:
        assert store.cancel_job(session, job_id=long_job).status == "cancelling"
    # Bounded well inside one heartbeat: the status is read every second, the child stops at
    # its next batch (milliseconds), and the worker writes `cancelled`.
    job = wait_for(finished(job_state, long_job), timeout=4.5, what="the cancel to take effect")

    assert job.status == "cancelled", worker.logs()
    assert job.model_id is None and job.finished_at is not None
    kept = metrics_of(sessions, long_job)
    assert len(kept) >= 1 and [m.epoch for m in kept] == list(range(1, len(kept) + 1))
    assert len(kept) < 2000
    assert [c.outcome for c in claims_of(sessions, long_job)] == ["cancelled"]
    assert checkpoints_of(sessions, long_job) == 0  # its metrics stay, its checkpoint doesn't
    # The worker carries on with the next job.
    next_job = make_job("next")
    assert wait_for(finished(job_state, next_job), timeout=60, what="the next job").status == (
        "succeeded"
    )


def test_a_poison_job_fails_worker_lost_after_max_attempts_while_others_succeed(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    poison = make_job(POISON_JOB_NAME, max_attempts=3)
    healthy = [make_job(f"healthy {i}") for i in range(3)]
    worker = start_worker()

    ended = [
        wait_for(finished(job_state, j), timeout=60, what="every job to end")
        for j in [poison, *healthy]
    ]

    assert [j.status for j in ended] == ["failed", "succeeded", "succeeded", "succeeded"], (
        worker.logs()
    )
    job = ended[0]
    assert (job.error_code, job.attempts) == ("worker_lost", 3)
    assert f"exited with code {CRASH_EXIT_CODE}" in (job.error or "")
    assert [c.outcome for c in claims_of(sessions, poison)] == ["crashed"] * 3
    assert worker.process.is_alive()  # the crashes ended attempts, never the worker


def test_out_of_memory_fails_the_job_at_once_naming_batch_size_and_parameters(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    oom = make_job(OOM_JOB_NAME, training=iris_training(epochs=3, batch_size=10))
    after = make_job("after the oom")
    worker = start_worker()

    job = wait_for(finished(job_state, oom), timeout=60, what="the out-of-memory job to end")
    next_job = wait_for(finished(job_state, after), timeout=60, what="the job behind it")

    assert (job.status, job.error_code, job.attempts) == ("failed", "out_of_memory", 1), (
        job.error,
        worker.logs(),
    )
    message = job.error or ""
    # 4 -> 8 -> 3: 67 parameters (Keras' count), and the batch size the job asked for
    assert "67 parameters" in message and "batch_size 10" in message, message
    assert "lower batch_size" in message, message
    assert job.model_id is None and metrics_of(sessions, oom) == []
    assert [c.outcome for c in claims_of(sessions, oom)] == [
        "failed"
    ]  # no retry: it would OOM again
    assert next_job.status == "succeeded", worker.logs()
    assert worker.process.is_alive()  # the error ended the attempt, not the worker


def test_sigterm_hands_the_job_back_without_penalty_and_another_worker_resumes_it(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    epochs = 20
    job_id = make_job("handed back", training=iris_training(epochs=epochs, batch_size=5))
    first = start_worker()
    wait_for(lambda: job_state(job_id).epoch >= 2, timeout=60, what="epoch 2")

    first.signal(signal.SIGTERM)
    first.process.join(30)

    assert first.process.exitcode == 0, first.logs()
    job = job_state(job_id)
    assert (job.status, job.attempts, job.claimed_by) == ("queued", 0, None), first.logs()
    with sessions() as session:
        checkpoint = store.load_checkpoint(session, job_id=job_id)
    assert checkpoint is not None and checkpoint[0] == job.epoch >= 2
    handed_back_at = job.epoch

    second = start_worker()
    job = wait_for(finished(job_state, job_id), timeout=60, what="the resumed job to finish")

    assert (job.status, job.attempts) == ("succeeded", 1), second.logs()
    tokens = [(m.epoch, m.lease_token) for m in metrics_of(sessions, job_id)]
    assert tokens == [(e, 1 if e <= handed_back_at else 2) for e in range(1, epochs + 1)]
    assert [c.outcome for c in claims_of(sessions, job_id)] == ["released", "succeeded"]
    assert checkpoints_of(sessions, job_id) == 0


def test_a_worker_trains_a_token_list_dataset_through_the_encoding_layer(
    start_worker: StartWorker,
    make_job: MakeJob,
    job_state: JobState,
    sessions: sessionmaker[Session],
) -> None:
    # documents whose topic shows in its words, stored as the API stores a sequences upload
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 120)
    docs = [
        [int(w) for w in rng.integers(0, 50, 6)] + [50 + 3 * int(c) + k for k in range(3)]
        for c in labels
    ]
    parsed = build_dataset(
        x=np.zeros((120, 0)), targets=labels.tolist(), task="classification",
        feature_names=["sequences"], target_names=None, tokens=sequences_tokens(docs),
    )  # fmt: skip
    encoded = encode_arrays(parsed)
    with sessions.begin() as session:
        dataset = Dataset(
            name="wires", task="classification", rows=120, n_features=0, n_outputs=1,
            feature_names=["sequences"], target_names=["target"], classes=parsed.classes,
            features=bytes(encoded.features), targets=encoded.targets, sha256=encoded.sha256,
            tokens=parsed.tokens.n_tokens if parsed.tokens else None, max_token_id=58,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    network = {"layers": [{"type": "category_encoding", "num_tokens": 60},
                          {"type": "dense", "units": 16, "activation": "relu"},
                          {"type": "dropout", "rate": 0.2},
                          {"type": "dense", "units": 3, "activation": "softmax"}]}  # fmt: skip
    training = iris_training(epochs=8, batch_size=16, optimizer="rmsprop")
    job_id = make_job("wires", network=network, training=training, dataset_id=dataset_id)
    worker = start_worker()
    job = wait_for(finished(job_state, job_id), timeout=60, what="the job to finish")
    assert job.status == "succeeded", (job.error, worker.logs())
    metrics = metrics_of(sessions, job_id)
    assert [m.epoch for m in metrics] == list(range(1, 9))
    assert metrics[-1].values["accuracy"] > 0.6  # the topic words are there to be learned
    with sessions() as session:
        model = session.get(Model, job.model_id)
        assert model is not None
        predictor = models.Predictor(model.weights)
    assert predictor.takes_tokens
    assert (predictor.predict(docs).argmax(axis=1) == labels).mean() > 0.6
    assert worker.stop() == 0
