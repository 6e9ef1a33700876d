"""Train and predict over real HTTP through a live server and a separate worker process."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from app.csv_ingest import parse_csv
from app.data import BUILTINS
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.slow

IRIS_CSV = BUILTINS["iris"].read_bytes()


def builtin_arrays(name: str) -> Any:
    builtin = BUILTINS[name]
    return parse_csv(builtin.read_bytes(), target=builtin.target, task=builtin.task)


def dense(units: int, activation: str, **extra: Any) -> dict[str, Any]:
    return {"type": "dense", "units": units, "activation": activation, **extra}


def predict(stack: Stack, model_id: str, x: np.ndarray) -> dict[str, Any]:
    response = stack.client.post(f"/v1/models/{model_id}/predict", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return response.json()


def test_iris_csv_trains_to_95_percent_with_metrics_while_running(stack: Stack) -> None:
    files = {"file": ("iris.csv", IRIS_CSV, "text/csv")}
    upload = stack.client.post(
        "/v1/datasets", files=files, data={"target": "species", "name": "iris"}
    )
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    epochs = 40  # enough for >= 0.97 on every seed we tried (0..7) at this learning rate
    body = {
        "name": "iris 4-8-8-3",
        "dataset": dataset["id"],
        "network": {
            "layers": [dense(8, "relu", input_dim=4), dense(8, "relu"), dense(3, "softmax")]
        },
        "training": {
            "loss": "categorical_crossentropy",
            "optimizer": {"name": "adam", "learning_rate": 0.01},
            "batch_size": 10,
            "epochs": epochs,
            "standardize": True,
            "seed": 0,
        },
    }
    response = stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"

    # Metrics rows appear while the job runs: read them, then see the job still running.
    seen_while_running: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
        job = stack.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and rows:
            seen_while_running.append(len(rows))
            assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
            assert job["metrics"]["epoch"] >= len(rows)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded", f"{job['error']}\n{stack.logs()}"
    assert seen_while_running and min(seen_while_running) < epochs, stack.logs()

    metrics = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert job["epoch"] == epochs and job["attempts"] >= 1 and job["device"] == "cpu"

    data = builtin_arrays("iris")
    result = predict(stack, job["model_id"], data.x)
    truth = [data.classes[i] for i in data.y]
    accuracy = float(np.mean([p == t for p, t in zip(result["predictions"], truth, strict=True)]))
    assert accuracy >= 0.95, accuracy
    outputs = np.array(result["outputs"])
    assert outputs.shape == (150, 3)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)

    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    assert model["summary"]["total_params"] == 139
    assert model["classes"] == ["setosa", "versicolor", "virginica"]
    weights = stack.client.get(f"/v1/models/{job['model_id']}/weights")
    assert weights.status_code == 200 and len(weights.content) > 139 * 4


def test_dropout_model_predicts_the_same_twice(stack: Stack) -> None:
    job = stack.train(
        {
            "dataset": "iris",
            "network": {
                "layers": [
                    dense(16, "relu", input_dim=4),
                    {"type": "dropout", "rate": 0.5},
                    dense(3, "softmax"),
                ]
            },
            "training": {
                "loss": "sparse_categorical_crossentropy",
                "optimizer": "adam",
                "batch_size": 16,
                "epochs": 5,
                "standardize": True,
                "seed": 3,
            },
        }
    )
    x = builtin_arrays("iris").x[::10]
    first = predict(stack, job["model_id"], x)
    for _ in range(3):
        assert predict(stack, job["model_id"], x) == first


def test_a_body_sent_in_chunks_predicts_as_one_sent_whole(stack: Stack) -> None:
    """Over real HTTP the body may come in several pieces (Transfer-Encoding: chunked): the route
    reads it whole for a cache miss (the first request), a hit (later ones) and an error."""
    job = stack.train(
        {
            "dataset": "iris",
            "network": {"layers": [dense(8, "relu", input_dim=4), dense(3, "softmax")]},
            "training": {"loss": "sparse_categorical_crossentropy", "epochs": 3, "seed": 4},
        }
    )
    url = f"/v1/models/{job['model_id']}/predict"
    rows = builtin_arrays("iris").x[::15].tolist()

    def chunked(body: bytes) -> Any:
        return (body[i : i + 7] for i in range(0, len(body), 7))

    headers = {"content-type": "application/json"}
    body = json.dumps({"inputs": rows}).encode()
    answers = [stack.client.post(url, content=chunked(body), headers=headers) for _ in range(3)]
    assert all(a.request.headers.get("transfer-encoding") == "chunked" for a in answers)
    assert [a.status_code for a in answers] == [200] * 3, answers[0].text
    whole = stack.client.post(url, json={"inputs": rows})
    assert {a.content for a in answers} == {whole.content}
    narrow = json.dumps({"inputs": [[1, 2, 3]]}).encode()
    refused = stack.client.post(url, content=chunked(narrow), headers=headers)
    assert refused.status_code == 422 and "inputs[0] has 3 values" in refused.json()["detail"]


def test_regression_with_mse_and_a_linear_output(stack: Stack) -> None:
    job = stack.train(
        {
            "dataset": "diabetes",
            "network": {"layers": [dense(16, "relu", input_dim=10), dense(1, "linear")]},
            "training": {
                "loss": "mse",
                "optimizer": {"name": "adam", "learning_rate": 0.05},
                "batch_size": 32,
                "epochs": 30,
                "standardize": True,
                "seed": 0,
            },
        }
    )
    metrics = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"]
    assert metrics[-1]["loss"] < 0.25 * metrics[0]["loss"]
    assert "mae" in metrics[-1]
    data = builtin_arrays("diabetes")
    result = predict(stack, job["model_id"], data.x)
    assert result["predictions"] is None
    outputs = np.array(result["outputs"])
    assert outputs.shape == (442, 1)
    # Better than always guessing the mean (R^2 > 0.3 on the training rows).
    y = data.y[:, 0]
    r2 = 1 - np.sum((outputs[:, 0] - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 > 0.3, r2


def test_binary_with_a_sigmoid_and_binary_crossentropy(stack: Stack) -> None:
    job = stack.train(
        {
            "dataset": "breast_cancer",
            "network": {"layers": [dense(16, "relu", input_dim=30), dense(1, "sigmoid")]},
            "training": {
                "loss": "binary_crossentropy",
                "optimizer": {"name": "adam", "learning_rate": 0.01},
                "batch_size": 32,
                "epochs": 10,
                "standardize": True,
                "seed": 0,
            },
        }
    )
    data = builtin_arrays("breast_cancer")
    result = predict(stack, job["model_id"], data.x)
    outputs = np.array(result["outputs"])
    assert outputs.shape == (569, 1) and ((outputs >= 0) & (outputs <= 1)).all()
    assert set(result["predictions"]) == {"benign", "malignant"}
    truth = [data.classes[i] for i in data.y]
    accuracy = float(np.mean([p == t for p, t in zip(result["predictions"], truth, strict=True)]))
    assert accuracy >= 0.95, accuracy
