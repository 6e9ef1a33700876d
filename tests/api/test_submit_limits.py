"""Limits checked at submit. A job whose training step can't fit in memory is refused (422) with
the figure, the limit and what to shrink, instead of failing on the worker three times with a
raw allocator message (issue 18: 262,145 parameters, batch_size "full" on 300,000 rows through
65,536 units); a job's own time budget can't exceed the server's job time limit."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from app.dataset_codec import build_dataset, encode_arrays, sequences_tokens
from app.tables import Dataset, Job
from tests.api.conftest import Rows, assert_error

pytestmark = pytest.mark.anyio

WIDE_NETWORK = {
    "layers": [
        {"type": "dense", "units": 65_536, "activation": "relu", "input_dim": 2},
        {"type": "dense", "units": 1},
    ]
}
IRIS = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
REUTERS_NETWORK = {
    "layers": [
        {"type": "category_encoding", "num_tokens": 10_000, "output_mode": "multi_hot"},
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "dense", "units": 46, "activation": "softmax"},
    ]
}


def _store(db: Rows, name: str, parsed: Any) -> str:
    encoded = encode_arrays(parsed)
    with db.begin() as session:
        row = Dataset(
            name=name,
            task=parsed.task,
            rows=parsed.rows,
            n_features=parsed.n_features,
            n_outputs=parsed.n_outputs,
            feature_names=parsed.feature_names,
            target_names=parsed.target_names,
            classes=parsed.classes,
            features=bytes(encoded.features),
            targets=encoded.targets,
            sha256=encoded.sha256,
            tokens=parsed.tokens.n_tokens if parsed.tokens is not None else None,
            max_token_id=int(parsed.tokens.values.max()) if parsed.tokens is not None else None,
        )
        session.add(row)
        session.flush()
        return str(row.id)


@pytest.fixture
def wide_rows(db: Rows) -> str:
    """300,000 rows of 2 features and a numeric target, stored as an upload would be."""
    x = np.random.default_rng(0).normal(size=(300_000, 2))
    parsed = build_dataset(
        x=x, targets=x[:, 0].tolist(), task="regression", feature_names=["a", "b"],
        target_names=None,
    )  # fmt: skip
    return _store(db, "wide", parsed)


@pytest.fixture
def wires(db: Rows) -> str:
    """Reuters' shape: 8,982 newswires of token ids below 10,000, 46 topics."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 10_000, int(n)).tolist() for n in rng.integers(20, 200, 8_982)]
    labels = (np.arange(8_982) % 46).tolist()
    parsed = build_dataset(
        x=np.zeros((8_982, 0)), targets=labels, task="classification",
        feature_names=["sequences"], target_names=None, tokens=sequences_tokens(docs),
    )  # fmt: skip
    return _store(db, "wires", parsed)


async def test_the_wide_full_batch_attack_is_refused_at_submit(
    client: httpx.AsyncClient, db: Rows, wide_rows: str
) -> None:
    before = db.count(Job)
    body = {
        "dataset": wide_rows,
        "network": WIDE_NETWORK,
        "training": {"loss": "mse", "batch_size": "full", "epochs": 1},
    }
    response = await client.post("/v1/jobs", json=body)
    error = assert_error(
        response,
        422,
        "314.6 GB of activations",
        '"full" (300,000 training rows)',
        "FITSERVE_MAX_ACTIVATION_BYTES",
        "8.6 GB",
        "lower batch_size to at most 8,191",
        "network.layers[0] (65,536 units)",
    )
    assert error["code"] == "activation_memory"
    assert error["errors"][0]["loc"] == ["body", "training", "batch_size"]  # type: ignore[index]
    assert db.count(Job) == before  # nothing queued

    # The fix it names works: the same network at the largest batch that fits is accepted.
    body["training"] = {"loss": "mse", "batch_size": 8_191, "epochs": 1}
    assert (await client.post("/v1/jobs", json=body)).status_code == 202


async def test_the_reuters_network_at_batch_512_is_accepted(
    client: httpx.AsyncClient, wires: str
) -> None:
    training = {"loss": "sparse_categorical_crossentropy", "batch_size": 512, "epochs": 1}
    response = await client.post(
        "/v1/jobs", json={"dataset": wires, "network": REUTERS_NETWORK, "training": training}
    )
    assert response.status_code == 202, response.text


async def test_a_time_budget_over_the_server_limit_is_refused(
    client: httpx.AsyncClient, db: Rows
) -> None:
    training = {"loss": "categorical_crossentropy", "epochs": 1, "max_seconds": 7 * 3600}
    body = {"dataset": "iris", "network": IRIS, "training": training}
    before = db.count(Job)
    error = assert_error(
        await client.post("/v1/jobs", json=body),
        422,
        "training.max_seconds is 25,200 s",
        "21,600 s (FITSERVE_MAX_JOB_SECONDS)",
    )
    assert error["errors"][0]["loc"] == ["body", "training", "max_seconds"]  # type: ignore[index]
    assert db.count(Job) == before

    training["max_seconds"] = 60
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["training"]["max_seconds"] == 60
