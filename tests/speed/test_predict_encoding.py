"""Prediction speed changes that must not change a single answer: chunking under
inference_mode, and the JSON encoded from the output arrays in one orjson call."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

import models
from app.inference import ServedModel
from app.schemas import PredictResponse
from app.services.predict import encode_predictions
from tests.api.test_models import store_model, trained


def _labels(outputs: np.ndarray, classes: list[Any]) -> list[Any] | None:
    model = ServedModel(id="m", owner_id=None, task="classification", classes=classes,
                        feature_names=[], target_names=[], predictor=None)  # type: ignore[arg-type]  # fmt: skip
    return model.labels(outputs)


NETWORK = {
    "layers": [
        {"type": "dense", "units": 16, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


@pytest.fixture(scope="module")
def predictor(iris: Any) -> models.Predictor:
    x, y = iris
    training = {"loss": "sparse_categorical_crossentropy", "optimizer": "adam", "epochs": 3,
                "seed": 0, "standardize": True}  # fmt: skip
    result = models.fit(NETWORK, training, x, y, device="cpu")
    return models.Predictor(models.save_model(result, NETWORK))


def test_chunked_predictions_equal_unchunked(predictor: models.Predictor, iris: Any) -> None:
    x = np.concatenate([iris[0]] * 7)  # 1050 rows
    whole = predictor.predict(x)
    for chunk_rows in (1, 7, 128, 1049):
        np.testing.assert_allclose(predictor.predict(x, chunk_rows=chunk_rows), whole, rtol=1e-6)
    assert whole.shape == (1050, 3) and whole.dtype == np.float32
    assert predictor.predict(np.zeros((0, 4), np.float32)).shape == (0, 3)


@pytest.mark.parametrize("classes", [["setosa", "versicolor", "virginica"], [0, 1, 2], None])
def test_the_json_is_the_response_models_json(
    predictor: models.Predictor, iris: Any, classes: list[Any] | None
) -> None:
    outputs = predictor.predict(iris[0])
    labels = _labels(outputs, classes) if classes else None
    old = PredictResponse(outputs=outputs.tolist(), predictions=labels).model_dump_json()
    new = encode_predictions(outputs, labels)
    # the same numbers to the last digit, and the same types (label ints stay ints)
    assert json.loads(new) == json.loads(old)
    assert new.replace(b" ", b"") == old.encode().replace(b" ", b"")
    if classes:
        assert labels == [classes[i] for i in outputs.argmax(axis=1)]


def test_a_sigmoid_unit_labels_by_threshold() -> None:
    outputs = np.array([[0.2], [0.5], [0.9]], dtype=np.float32)
    assert _labels(outputs, ["no", "yes"]) == ["no", "yes", "yes"]


@pytest.mark.anyio
async def test_the_endpoint_answers_what_the_predictor_computes(
    client: httpx.AsyncClient, db: Any
) -> None:
    model_id = store_model(db)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    response = await client.post(f"/v1/models/{model_id}/predict", json={"inputs": rows})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"outputs", "predictions"}
    expected = models.Predictor(trained()[0]).predict(np.array(rows, dtype=np.float32))
    assert body["outputs"] == expected.tolist()  # float32 values, exactly
    classes = ["setosa", "versicolor", "virginica"]
    assert body["predictions"] == [classes[i] for i in expected.argmax(axis=1)]


@pytest.mark.anyio
async def test_a_cached_model_answers_only_its_owner(
    app: Any, client: httpx.AsyncClient, db: Any
) -> None:
    # cache hits skip the database: the owner check must still hold on them
    from app.auth import create_key
    from tests.api.conftest import assert_error

    with db.begin() as session:
        (key_a, secret_a), (_, secret_b) = (
            create_key(session, name="a"),
            create_key(session, name="b"),
        )
        owner_a = key_a.id
    model_id = store_model(db, owner=owner_a)
    url, body = f"/v1/models/{model_id}/predict", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    for _ in range(2):  # a miss, then a hit
        ok = await client.post(url, json=body, headers={"Authorization": f"Bearer {secret_a}"})
        assert ok.status_code == 200, ok.text
    cache = app.state.model_cache
    assert cache.misses == 1 and cache.hits == 1 and model_id in cache
    other = await client.post(url, json=body, headers={"Authorization": f"Bearer {secret_b}"})
    assert_error(other, 404, "not found")
    assert_error(await client.post(url, json=body), 404)  # keyless is nobody's key


def test_the_cache_loads_once_and_evicts_the_least_recently_used() -> None:
    from app.inference import ModelCache

    cache = ModelCache[str](2)
    loads: list[str] = []

    def load(value: str) -> Any:
        return lambda: loads.append(value) or value

    assert cache.get("m1", load("one")) == "one"
    assert cache.get("m1", load("not loaded")) == "one"  # a hit never calls load
    cache.get("m2", load("two"))
    cache.get("m1", load("not loaded"))  # m1 is now the most recently used
    cache.get("m3", load("three"))  # evicts m2
    assert "m2" not in cache and "m1" in cache and len(cache) == 2
    assert loads == ["one", "two", "three"]
    assert (cache.hits, cache.misses) == (2, 3)

    def fails() -> str:
        raise RuntimeError("no such model")

    with pytest.raises(RuntimeError):
        cache.get("m4", fails)
    assert "m4" not in cache  # a failed load keeps nothing
