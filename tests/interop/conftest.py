"""A trained iris model in a fresh database, the way the worker leaves one: submitted through
POST /v1/jobs, claimed with `claim_next_job`, trained with `models.fit` on the dataset row's
arrays and stored by `finish_job` (save_model bytes carrying task and classes, as
app/queue/child.py makes them)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest

import models
from app.auth import create_key
from app.config import Settings
from app.dataset_codec import decode_arrays
from app.main import create_app
from app.queue.store import claim_next_job, finish_job
from app.tables import Dataset, Job, Model

IRIS_NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
# A few full-batch epochs: the outputs only have to be a real trained model's, not a good one.
IRIS_TRAINING = {"loss": "sparse_categorical_crossentropy", "optimizer": {"name": "adam",
                 "learning_rate": 0.05}, "batch_size": "full", "epochs": 5, "standardize": True,
                 "seed": 0}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Any]:
    application = create_app(Settings(database_url=database_url))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


@cache
def _train(x: bytes, y: bytes, classes: str) -> tuple[bytes, str]:
    """Trained once per session (the same iris arrays in every test database)."""
    features = np.frombuffer(x, dtype=np.float32).reshape(-1, 4)
    targets = np.frombuffer(y, dtype=np.int64)
    result = models.fit(IRIS_NETWORK, IRIS_TRAINING, features, targets, device="cpu")
    extra = {"task": "classification", "classes": json.loads(classes)}
    weights = models.save_model(result, result.network, extra=extra)
    return weights, json.dumps(result.history[-1].as_dict())


def train_queued_job(sessionmaker: Any, job_id: str) -> str:
    """Claim the queued job `job_id`, train it (once per session) and finish it as the worker
    does; the new model's id."""
    with sessionmaker.begin() as session:
        claim = claim_next_job(session, worker="interop-test", lease_seconds=60)
        assert claim is not None and claim.job_id == job_id
        dataset = session.get(Dataset, claim.dataset_id)
        assert dataset is not None
        x, y = decode_arrays(dataset)
        assert dataset.task == "classification"
        weights, metrics = _train(
            x.tobytes(), y.astype(np.int64).tobytes(), json.dumps(dataset.classes)
        )
        job = session.get(Job, claim.job_id)
        assert job is not None
        model = Model(
            owner_id=job.owner_id,
            dataset_id=claim.dataset_id,
            network=claim.network,
            training=claim.training,
            task=dataset.task,
            classes=dataset.classes,
            metrics=json.loads(metrics),
            weights=weights,
        )
        finish_job(session, job_id=claim.job_id, lease_token=claim.lease_token, model=model)
        return str(model.id)


@dataclass
class Trained:
    model_id: str
    headers: dict[str, str]  # the owner's Authorization header
    other: dict[str, str]  # another key's


@pytest.fixture
async def trained(app: Any, client: httpx.AsyncClient) -> Trained:
    with app.state.sessionmaker.begin() as session:
        _, owner_secret = create_key(session, name="owner")
        _, other_secret = create_key(session, name="other")
    headers = {"Authorization": f"Bearer {owner_secret}"}
    submitted = await client.post(
        "/v1/jobs",
        json={"network": IRIS_NETWORK, "training": IRIS_TRAINING, "dataset": "iris"},
        headers=headers,
    )
    assert submitted.status_code == 202, submitted.text
    model_id = train_queued_job(app.state.sessionmaker, submitted.json()["id"])
    return Trained(model_id, headers, {"Authorization": f"Bearer {other_secret}"})
