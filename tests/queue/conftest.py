"""Queue fixtures: a session factory on the test's database, the iris dataset as a Dataset row,
and job rows built straight through the store (the API is tested elsewhere)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sklearn.datasets import load_iris
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.queue import store
from app.tables import Dataset, Job

IRIS_NETWORK: dict[str, Any] = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


def iris_training(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "adam",
        "epochs": 1,
        "batch_size": 10,
        "seed": 1,
    }
    config.update(overrides)
    return config


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def iris_dataset_row(rows: int | None = None) -> Dataset:
    """The real iris data (scikit-learn's bundled copy), encoded as the worker reads it."""
    iris = load_iris()
    x = np.ascontiguousarray(iris.data[:rows], dtype=np.float32)  # (rows, 4)
    y = np.ascontiguousarray(iris.target[:rows], dtype=np.int64)  # (rows,) class indices
    features = st_save({"x": x})
    targets = st_save({"y": y})
    return Dataset(
        name="iris",
        task="classification",
        rows=int(x.shape[0]),
        n_features=4,
        n_outputs=1,
        feature_names=list(iris.feature_names),
        target_names=["species"],
        classes=[str(c) for c in iris.target_names],
        features=features,
        targets=targets,
        sha256=hashlib.sha256(features + targets).hexdigest(),
    )


@pytest.fixture
def iris_id(sessions: sessionmaker[Session]) -> str:
    with sessions.begin() as session:
        row = iris_dataset_row()
        session.add(row)
        session.flush()
        return row.id


MakeJob = Callable[..., str]


@pytest.fixture
def make_job(sessions: sessionmaker[Session], iris_id: str) -> MakeJob:
    """Queue a job through `enqueue_job` (committed); returns its id."""

    def make(
        name: str | None = None,
        *,
        network: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        max_attempts: int = 3,
    ) -> str:
        training = training or iris_training()
        with sessions.begin() as session:
            job = store.enqueue_job(
                session,
                job=Job(
                    name=name,
                    dataset_id=iris_id,
                    network=network or IRIS_NETWORK,
                    training=training,
                    epochs=int(training.get("epochs", 1)),
                    max_attempts=max_attempts,
                ),
            )
            return job.id

    return make
