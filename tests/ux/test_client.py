"""The Python client against a live server and worker: the round trip a script makes, with typed
results, and the server's errors raised as exceptions that carry its message."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import numpy as np
import pytest
from fitserve_client import (
    ConnectionFailed,
    Dataset,
    EpochMetrics,
    FitserveClient,
    InvalidInput,
    Job,
    NotFound,
    WaitTimeout,
)
from safetensors.numpy import load as load_safetensors

from tests.ux.conftest import IRIS_CSV, IRIS_NETWORK, IRIS_TRAINING, LiveServer, free_port


def iris_rows() -> tuple[list[list[float]], list[str]]:
    reader = csv.DictReader(io.StringIO(IRIS_CSV.read_text()))
    features, labels = [], []
    for row in reader:
        labels.append(row.pop("species"))
        features.append([float(v) for v in row.values()])
    return features, labels


def test_round_trip(live_server: LiveServer, tmp_path: Any) -> None:
    with FitserveClient(live_server.url) as client:
        dataset = client.upload_dataset(IRIS_CSV, target="species", name="iris upload")
        assert isinstance(dataset, Dataset)
        assert (dataset.rows, dataset.n_features) == (150, 4)
        assert sorted(dataset.classes or []) == ["setosa", "versicolor", "virginica"]
        assert dataset.id in {d.id for d in client.list_datasets()}

        seen: list[EpochMetrics] = []
        statuses: list[str] = []
        job = client.submit(IRIS_NETWORK, dataset.id, IRIS_TRAINING, name="client", epochs=25)
        assert isinstance(job, Job) and job.status == "queued" and job.epochs == 25
        job = client.wait(
            job.id, on_epoch=seen.append, on_status=lambda s: statuses.append(s["status"])
        )
        assert job.status == "succeeded" and job.model_id
        assert statuses[-1] == "succeeded"
        assert [m.epoch for m in seen] == list(range(1, 26))
        history = client.metrics(job.id)
        assert [m.loss for m in history] == pytest.approx([m.loss for m in seen])
        assert seen[-1].loss is not None and seen[-1].loss < seen[0].loss
        assert seen[-1].layer_grad_norms  # per-layer norms come through typed

        features, labels = iris_rows()
        prediction = client.predict(job.model_id, np.array(features, dtype=np.float32))
        assert len(prediction.outputs) == 150 and len(prediction.outputs[0]) == 3
        assert prediction.predictions is not None
        accuracy = np.mean([p == t for p, t in zip(prediction.predictions, labels, strict=True)])
        assert accuracy >= 0.9, accuracy

        model = client.get_model(job.model_id)
        assert model.summary is not None and model.summary["total_params"] == 4 * 8 + 8 + 8 * 3 + 3
        weights = client.download_weights(job.model_id, tmp_path / "iris.safetensors")
        assert (tmp_path / "iris.safetensors").read_bytes() == weights
        tensors = load_safetensors(weights)
        assert sum(t.size for t in tensors.values()) >= 67


def test_upload_arrays(live_server: LiveServer) -> None:
    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(20, 2)
    y = x.sum(axis=1)
    with FitserveClient(live_server.url) as client:
        dataset = client.upload_dataset(
            x, y, name="arrays", task="regression", feature_names=["a", "b"]
        )
        assert (dataset.task, dataset.rows, dataset.feature_names) == ("regression", 20, ["a", "b"])
        assert client.get_dataset(dataset.id).id == dataset.id


def test_errors_carry_the_servers_message(live_server: LiveServer) -> None:
    with FitserveClient(live_server.url) as client:
        with pytest.raises(NotFound) as missing:
            client.get_job("f" * 32)
        assert missing.value.status_code == 404 and missing.value.code == "not_found"
        assert "not found" in str(missing.value)

        too_wide: dict[str, Any] = {
            "layers": [{**IRIS_NETWORK["layers"][0], "input_dim": 5}, IRIS_NETWORK["layers"][1]]
        }
        with pytest.raises(InvalidInput) as invalid:
            client.submit(too_wide, "iris", IRIS_TRAINING, epochs=1)
        assert invalid.value.status_code == 422
        assert "5" in str(invalid.value) and "4" in str(invalid.value)

    with FitserveClient(f"http://127.0.0.1:{free_port()}") as dead:
        with pytest.raises(ConnectionFailed, match="fitserve serve"):
            dead.health()


def test_wait_gives_up_at_its_timeout_and_the_job_goes_on(live_api: LiveServer) -> None:
    with FitserveClient(live_api.url) as client:
        job = client.submit(IRIS_NETWORK, "iris", IRIS_TRAINING, epochs=5000)
        try:
            started = time.monotonic()
            with pytest.raises(WaitTimeout, match="still running after 1.5 s"):
                client.wait(job.id, timeout=1.5)
            assert time.monotonic() - started < 10  # not held until the next keep-alive
            assert client.get_job(job.id).status in ("queued", "running")
        finally:
            client.cancel(job.id)
