"""/v1/models: read, weights, predict — on a model trained here with models.fit and stored as
the worker stores it (a succeeded job and its Model row), on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load as st_load
from sqlalchemy import select

import models
from app.auth import create_key
from app.config import Settings
from app.csv_ingest import parse_csv
from app.data import BUILTINS
from app.main import create_app
from app.tables import Dataset, Job, Model
from tests.api.conftest import Rows, assert_error

pytestmark = pytest.mark.anyio

NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
TRAINING = {
    "loss": "categorical_crossentropy",
    "optimizer": {"name": "adam", "learning_rate": 0.02},
    "batch_size": 16,
    "epochs": 40,
    "standardize": True,
    "seed": 1,
}


@cache
def iris() -> Any:
    builtin = BUILTINS["iris"]
    return parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)


@cache
def trained() -> tuple[bytes, dict[str, Any]]:
    data = iris()
    result = models.fit(NETWORK, TRAINING, data.x, data.y, device="cpu")
    return models.save_model(result, NETWORK), result.history[-1].as_dict()


def store_model(db: Rows, owner: str | None = None) -> str:
    weights, final = trained()
    with db.begin() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "iris", Dataset.builtin))
        job = Job(
            owner_id=owner,
            dataset_id=dataset.id,
            network=NETWORK,
            training=TRAINING,
            status="succeeded",
            epochs=TRAINING["epochs"],
            epoch=TRAINING["epochs"],
            finished_at=datetime.now(UTC),
        )
        session.add(job)
        session.flush()
        model = Model(
            owner_id=owner,
            job_id=job.id,
            dataset_id=dataset.id,
            network=NETWORK,
            training=TRAINING,
            task="classification",
            classes=dataset.classes,
            metrics=final,
            weights=weights,
        )
        session.add(model)
        session.flush()
        job.model_id = model.id
        return model.id


async def test_model_read_has_summary_metrics_and_standardization(
    client: httpx.AsyncClient, db: Rows
) -> None:
    model_id = store_model(db)
    response = await client.get(f"/v1/models/{model_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classes"] == ["setosa", "versicolor", "virginica"]
    assert body["summary"]["total_params"] == 4 * 8 + 8 + 8 * 3 + 3
    assert body["input_dim"] == 4 and body["task"] == "classification"
    assert body["metrics"]["epoch"] == TRAINING["epochs"]
    assert body["metrics"]["loss"] == pytest.approx(trained()[1]["loss"])
    # The training rows' statistics, as the model applies them to every input.
    np.testing.assert_allclose(body["standardization"]["mean"], iris().x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(body["standardization"]["std"], iris().x.std(axis=0), rtol=1e-4)
    listed = (await client.get("/v1/models")).json()["items"]
    assert [m["id"] for m in listed] == [model_id]


async def test_weights_download_is_the_stored_safetensors(
    client: httpx.AsyncClient, db: Rows
) -> None:
    model_id = store_model(db)
    response = await client.get(f"/v1/models/{model_id}/weights")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert f"model-{model_id}.safetensors" in response.headers["content-disposition"]
    assert response.content == trained()[0]
    tensors = st_load(response.content)
    assert any(t.shape == (8, 4) or t.shape == (4, 8) for t in tensors.values())


async def test_predict_labels_accuracy_and_dropout_off(client: httpx.AsyncClient, db: Rows) -> None:
    model_id = store_model(db)
    data = iris()
    payload = {"inputs": data.x.tolist()}
    first = await client.post(f"/v1/models/{model_id}/predict", json=payload)
    assert first.status_code == 200, first.text
    body = first.json()
    outputs = np.array(body["outputs"])
    assert outputs.shape == (150, 3)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)  # softmax probabilities
    truth = [data.classes[i] for i in data.y]
    accuracy = np.mean([p == t for p, t in zip(body["predictions"], truth, strict=True)])
    assert accuracy >= 0.9
    assert body["predictions"] == [data.classes[i] for i in outputs.argmax(axis=1)]
    # Dropout (rate 0.5) is off at inference: the same inputs give the same outputs.
    again = (await client.post(f"/v1/models/{model_id}/predict", json=payload)).json()
    assert again["outputs"] == body["outputs"]
    # ... and the same as the core's own Predictor on the stored bytes.
    np.testing.assert_allclose(outputs, models.Predictor(trained()[0]).predict(data.x), rtol=1e-6)


async def test_predict_refuses_bad_inputs(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, max_predict_rows=5))
    async with app.router.lifespan_context(app):
        db = Rows(app.state.sessionmaker)
        model_id = store_model(db)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            url = f"/v1/models/{model_id}/predict"
            body = assert_error(
                await client.post(url, json={"inputs": [[1, 2, 3, 4], [1, 2, 3]]}),
                422,
                "inputs[1]",
                "4 features",
            )
            assert body["errors"][0]["loc"] == ["body", "inputs", 1]
            assert_error(
                await client.post(url, json={"inputs": [[1, 2, 3, 4]] * 6}),
                413,
                "6 input rows",
                "limit is 5",
            )
            assert_error(await client.post(url, json={"inputs": []}), 422, "body.inputs")
            assert_error(
                await client.post(url, json={"inputs": [[1, 2, 3, "4"]]}), 422, "body.inputs[0][3]"
            )
            assert_error(
                await client.post(url, json={"inputs": [[1, 2, 3, 1e39]]}),
                422,
                "inputs[0]",
                "float32",
            )
            assert_error(await client.post(url, json={"rows": [[1, 2, 3, 4]]}), 422, "inputs")
            assert_error(
                await client.post(
                    f"/v1/models/{'0' * 32}/predict", json={"inputs": [[1, 2, 3, 4]]}
                ),
                404,
            )


async def test_the_cache_loads_a_model_once(app: Any, client: httpx.AsyncClient, db: Rows) -> None:
    model_id = store_model(db)
    cache_ = app.state.model_cache
    for _ in range(3):
        await client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert model_id in cache_ and cache_.misses == 1 and cache_.hits == 2


async def test_other_keys_models_are_404(client: httpx.AsyncClient, db: Rows) -> None:
    with db.begin() as session:
        (key_a, _), (_, secret_b) = create_key(session, name="a"), create_key(session, name="b")
        owner_a = key_a.id
    model_id = store_model(db, owner=owner_a)
    b = {"Authorization": f"Bearer {secret_b}"}
    for path in (f"/v1/models/{model_id}", f"/v1/models/{model_id}/weights"):
        assert_error(await client.get(path, headers=b), 404, "not found")
        assert_error(await client.get(path), 404)  # keyless is nobody's key
    response = await client.post(
        f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]}, headers=b
    )
    assert_error(response, 404)
    assert (await client.get("/v1/models", headers=b)).json()["items"] == []
