"""Token-list (sequences) datasets through /v1/datasets and /v1/jobs, on SQLite and Postgres:
JSON and Parquet uploads stored as values + offsets, limits in tokens, and the 422s that name the
row."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load as st_load

import models
from app.config import Settings
from app.dataset_codec import decode_arrays
from app.main import create_app
from app.tables import Dataset, Job, Model
from models.tokens import TokenLists
from tests.api.conftest import Rows, assert_error

pytestmark = pytest.mark.anyio

DOCS = [[1, 14, 22, 16], [1, 3267, 699], [], [1, 53, 2, 8, 8], [1, 9]]
LABELS = ["grain", "earn", "earn", "grain", "acq"]


def encoding_network(num_tokens: int = 4_000, mode: str = "multi_hot") -> dict[str, Any]:
    return {
        "layers": [
            {"type": "category_encoding", "num_tokens": num_tokens, "output_mode": mode},
            {"type": "dense", "units": 8, "activation": "relu"},
            {"type": "dense", "units": 3, "activation": "softmax"},
        ]
    }


def job(dataset: str, network: dict[str, Any], **training: Any) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "network": network,
        "training": {"loss": "categorical_crossentropy", "epochs": 1, **training},
    }


async def upload(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/datasets", json={"name": "wires", "sequences": DOCS, "targets": LABELS, **body}
    )


async def test_sequences_are_stored_as_values_and_offsets(
    client: httpx.AsyncClient, db: Rows
) -> None:
    response = await upload(client)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "sequences" and body["rows"] == 5 and body["n_features"] == 0
    assert (body["tokens"], body["max_token_id"]) == (14, 3267)
    assert body["classes"] == ["acq", "earn", "grain"]
    row = db.get(Dataset, body["id"])
    assert row is not None
    stored = st_load(bytes(row.features))
    assert set(stored) == {"values", "offsets"}  # never a dense matrix
    assert stored["offsets"].tolist() == [0, 4, 7, 7, 12, 14]
    assert stored["values"].tolist() == [v for doc in DOCS for v in doc]
    x, y = decode_arrays(row)
    assert isinstance(x, TokenLists) and x.rows == 5 and y.tolist() == [2, 1, 1, 2, 0]
    listed = (await client.get(f"/v1/datasets/{body['id']}")).json()
    assert listed["kind"] == "sequences"
    iris = next(d for d in (await client.get("/v1/datasets")).json()["items"] if d["builtin"])
    assert iris["kind"] == "features" and iris["tokens"] is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sequences": [[1, 2], [3, -1], [4], [5], [6]]}, ["sequences[1][1]", "greater than"]),
        ({"sequences": [[1, 2], [3, 1.5], [4], [5], [6]]}, ["sequences[1][1]", "integer"]),
        ({"sequences": [[1], [2], [True], [5], [6]]}, ["sequences[2][0]", "integer"]),
        ({"sequences": [[1], [2], [1_000_000], [5], [6]]}, ["sequences[2][0]", "999999"]),
        ({"sequences": [[1], [2]]}, ["sequences has 2 rows", "targets has 5"]),
        ({"features": [[1.0]] * 5}, ["exactly one of them"]),
        ({"feature_names": ["a"]}, ["sequences have none"]),
    ],
)
async def test_bad_sequences_are_422_naming_the_row(
    client: httpx.AsyncClient, db: Rows, change: dict[str, Any], words: list[str]
) -> None:
    before = db.count(Dataset)
    assert_error(await upload(client, **change), 422, *words)
    assert db.count(Dataset) == before


async def test_the_limit_counts_token_ids(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, max_dataset_tokens=13))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        # 14 ids: over the limit though the dense matrix would be 5 x 3268 cells either way
        assert_error(await upload(client), 413, "14 token ids", "FITSERVE_MAX_DATASET_TOKENS")
        ok = await upload(client, sequences=[d[:3] for d in DOCS])
        assert ok.status_code == 201, ok.text


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


async def upload_parquet(client: httpx.AsyncClient, data: bytes, **fields: str) -> httpx.Response:
    files = {"file": ("wires.parquet", data, "application/vnd.apache.parquet")}
    return await client.post(
        "/v1/datasets", files=files, data={"target": "topic", "name": "wires", **fields}
    )


async def test_parquet_list_column_becomes_the_same_token_lists(
    client: httpx.AsyncClient, db: Rows
) -> None:
    table = pa.table(
        {
            "words": pa.array(DOCS, type=pa.list_(pa.int32())),
            "topic": pa.array(LABELS),
        }
    )
    response = await upload_parquet(client, parquet_bytes(table))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["kind"], body["tokens"], body["feature_names"]) == ("sequences", 14, ["words"])
    from_json = (await upload(client)).json()
    assert body["sha256"] == from_json["sha256"]  # the very same stored arrays
    # a sliced, multi-chunk large_list column reads the same
    chunked = pa.chunked_array(
        [
            pa.array(DOCS[:2], pa.large_list(pa.int64())),
            pa.array(DOCS[2:], pa.large_list(pa.int64())),
        ]
    )
    again = await upload_parquet(
        client, parquet_bytes(pa.table({"words": chunked, "topic": pa.array(LABELS)}))
    )
    assert again.json()["sha256"] == from_json["sha256"]


async def test_parquet_numeric_columns_are_a_feature_matrix(client: httpx.AsyncClient) -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": pa.array([4, 5, 6], pa.int16()),
                      "topic": ["x", "y", "x"]})  # fmt: skip
    body = (await upload_parquet(client, parquet_bytes(table))).json()
    assert (body["kind"], body["n_features"], body["feature_names"]) == ("features", 2, ["a", "b"])


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        ({"words": pa.array([[1], [-3], [2]], pa.list_(pa.int64()))}, ["row 1 has token id -3"]),
        ({"words": pa.array([[1], None, [2]], pa.list_(pa.int64()))}, ["row 1 is null"]),
        ({"words": pa.array([[1], [2, None], [2]], pa.list_(pa.int64()))}, ["row 1", "null"]),
        ({"words": pa.array([[1.5], [2.0], [3.0]])}, ["lists of double", "integers"]),
        ({"words": pa.array([[1], [2], [3]]), "extra": [1, 2, 3]}, ["beside other input"]),
        ({"words": pa.array(["a", "b", "c"])}, ["features must be numbers"]),
    ],
)
async def test_bad_parquet_is_422_naming_the_row(
    client: httpx.AsyncClient, db: Rows, columns: dict[str, Any], words: list[str]
) -> None:
    before = db.count(Dataset)
    table = pa.table({**columns, "topic": ["x", "y", "x"]})
    assert_error(await upload_parquet(client, parquet_bytes(table)), 422, *words)
    assert_error(await upload_parquet(client, b"PAR1 not really PAR1"), 422, "not a readable")
    assert db.count(Dataset) == before


async def test_submit_checks_the_ids_against_the_encoding_layer(
    client: httpx.AsyncClient, db: Rows
) -> None:
    dataset = (await upload(client)).json()["id"]
    ok = await client.post("/v1/jobs", json=job(dataset, encoding_network(3268)))
    assert ok.status_code == 202, ok.text
    jobs = db.count(Job)
    # id 3267 is in dataset row 1: num_tokens 3267 can't take it
    body = assert_error(
        await client.post("/v1/jobs", json=job(dataset, encoding_network(3267))),
        422,
        "dataset row 1 has token id 3267",
        "ids 0..3266",
    )
    assert body["errors"][0]["loc"] == ["body", "network", "layers", 0]  # type: ignore[index]
    assert_error(
        await client.post("/v1/jobs", json=job(dataset, encoding_network(4000, "one_hot"))),
        422,
        "dataset row 0 has 4 token ids; one_hot",
    )
    dense = {"layers": [{"type": "dense", "units": 3, "activation": "softmax", "input_dim": 4}]}
    assert_error(
        await client.post("/v1/jobs", json=job(dataset, dense)),
        422,
        "token lists (sequences) but the first layer is a dense layer",
        "category_encoding",
    )
    assert_error(
        await client.post("/v1/jobs", json=job(dataset, encoding_network(), standardize=True)),
        422,
        "set standardize to false",
    )
    assert_error(
        await client.post("/v1/jobs", json=job("iris", encoding_network())),
        422,
        "reads token lists, but the dataset has 4 feature columns",
    )
    too_many = encoding_network(1_000_001)
    assert_error(await client.post("/v1/jobs", json=job(dataset, too_many)), 422, "1000000")
    assert db.count(Job) == jobs


# ---------------------------------------------------------------- predictions from token lists


def store_token_model(db: Rows, dataset_id: str) -> tuple[str, models.Predictor]:
    """A category_encoding model trained on DOCS, stored as the worker stores one."""
    network = encoding_network(3268)
    training = {"loss": "categorical_crossentropy", "epochs": 3, "seed": 0}
    y = np.array([2, 1, 1, 2, 0])
    result = models.fit(network, training, DOCS, y, device="cpu")
    weights = models.save_model(
        result, network, extra={"task": "classification", "classes": ["acq", "earn", "grain"]}
    )
    with db.begin() as session:
        job = Job(dataset_id=dataset_id, network=network, training=training,
                  status="succeeded", epochs=3, epoch=3, finished_at=datetime.now(UTC))  # fmt: skip
        session.add(job)
        session.flush()
        model = Model(job_id=job.id, dataset_id=dataset_id, network=network, training=training,
                      task="classification", classes=["acq", "earn", "grain"], metrics={},
                      weights=weights)  # fmt: skip
        session.add(model)
        session.flush()
        job.model_id = model.id
        return model.id, models.Predictor(weights)


async def test_predictions_from_token_lists(client: httpx.AsyncClient, db: Rows) -> None:
    model_id, predictor = store_token_model(db, (await upload(client)).json()["id"])
    expected = predictor.predict(DOCS)
    url = f"/v1/models/{model_id}/predict"
    response = await client.post(url, json={"inputs": DOCS})  # ragged, one empty
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["outputs"], expected, rtol=1e-6)
    assert body["predictions"] == [["acq", "earn", "grain"][i] for i in expected.argmax(1)]
    same_length = await client.post(url, json={"inputs": [[1, 14, 22], [1, 53, 2]]})
    np.testing.assert_allclose(
        same_length.json()["outputs"], predictor.predict([[1, 14, 22], [1, 53, 2]]), rtol=1e-6
    )
    for inputs, words in (
        ([[1, 2], [3, 3268]], ["inputs[1] has token id 3268", "ids 0..3267"]),
        ([[1, 2], [3, -1]], ["inputs[1] has token id -1"]),
        ([[1, 2.5]], ["inputs[0] has 2.5"]),
    ):
        assert_error(await client.post(url, json={"inputs": inputs}), 422, *words)
    # the batch path: one document per line, NDJSON or comma-separated, in and out
    text = "[1, 14, 22, 16]\n1,3267,699\n[]\n\n[1, 53, 2, 8, 8]\n1,9\n"
    batch = await client.post(
        f"{url}.csv", content=text, headers={"content-type": "text/csv",
                                              "accept": "application/x-ndjson"},
    )  # fmt: skip
    assert batch.status_code == 200, batch.text
    lines = [json.loads(line) for line in batch.text.splitlines()]
    np.testing.assert_allclose([r["outputs"] for r in lines], expected, rtol=1e-6)
    assert_error(
        await client.post(
            f"{url}.csv", content="[1, 2]\n\n[5, 99999]\n", headers={"content-type": "text/csv"}
        ),  # fmt: skip
        422,
        "line 3 has token id 99999",
    )
    assert_error(
        await client.post(
            f"{url}.csv", content="[1, 2]\nfoo\n", headers={"content-type": "text/csv"}
        ),
        422,
        "line 2 is not a list of token ids",
    )


async def test_oip_v2_takes_token_ids_padded_with_minus_one(
    client: httpx.AsyncClient, db: Rows
) -> None:
    model_id, predictor = store_token_model(db, (await upload(client)).json()["id"])
    meta = (await client.get(f"/v2/models/{model_id}")).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "INT64", "shape": [-1, -1]}]
    padded = TokenLists.from_lists(DOCS).padded().numpy()  # (5, 5), -1 on padding
    body = {"inputs": [{"name": "input", "datatype": "INT64", "shape": list(padded.shape),
                        "data": padded.reshape(-1).tolist()}]}  # fmt: skip
    response = await client.post(f"/v2/models/{model_id}/infer", json=body)
    assert response.status_code == 200, response.text
    output = next(o for o in response.json()["outputs"] if o["name"] == "output")
    np.testing.assert_allclose(
        np.array(output["data"]).reshape(5, 3), predictor.predict(DOCS), rtol=1e-6
    )
    body["inputs"][0]["data"][0] = 5000  # an id num_tokens 3268 can't take
    bad = await client.post(f"/v2/models/{model_id}/infer", json=body)
    assert bad.status_code == 400 and "inputs[0] has token id 5000" in bad.text
