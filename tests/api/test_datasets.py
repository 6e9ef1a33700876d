"""/v1/datasets through the ASGI app, on SQLite and Postgres."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from safetensors.numpy import save as st_save
from sqlalchemy import text

from app.auth import create_key
from app.config import Settings
from app.data import BUILTINS
from app.dataset_codec import decode_arrays
from app.db import checkpoint
from app.main import create_app
from app.services import datasets as service
from app.tables import Dataset, Job
from tests.api.conftest import Rows, assert_error, iris_csv

pytestmark = pytest.mark.anyio

IRIS_NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


async def upload_csv(
    client: httpx.AsyncClient, data: bytes, *, target: str, name: str = "upload", **extra: str
) -> httpx.Response:
    files = {"file": ("data.csv", data, "text/csv")}
    return await client.post(
        "/v1/datasets", files=files, data={"target": target, "name": name, **extra}
    )


def count_datasets(db: Rows) -> int:
    return db.count(Dataset)


async def test_builtins_are_listed_with_their_shapes(client: httpx.AsyncClient) -> None:
    items = (await client.get("/v1/datasets")).json()["items"]
    builtins = {d["name"]: d for d in items if d["builtin"]}
    assert set(builtins) == set(BUILTINS)
    expected = {b.name: b for b in BUILTINS.values()}
    for name, d in builtins.items():
        # Shapes straight from the shipped CSV files: rows below the header, columns minus targets.
        lines = expected[name].read_bytes().decode().strip().splitlines()
        assert d["rows"] == len(lines) - 1
        assert d["n_features"] == len(lines[0].split(",")) - 1
        assert d["task"] == expected[name].task
    assert builtins["iris"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert builtins["digits"]["classes"] == list(range(10))
    assert builtins["breast_cancer"]["classes"] == ["benign", "malignant"]
    assert builtins["diabetes"]["classes"] is None


async def test_builtins_register_once_across_restarts(settings: Settings, db: Rows) -> None:
    before = count_datasets(db)
    for _ in range(2):
        again = create_app(settings)
        async with again.router.lifespan_context(again):
            pass
    assert count_datasets(db) == before == len(BUILTINS)


async def test_csv_upload_stores_the_same_arrays_as_the_file(
    client: httpx.AsyncClient, db: Rows
) -> None:
    response = await upload_csv(client, iris_csv(), target="species", name="my iris")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/datasets/{body['id']}"
    assert (body["task"], body["rows"], body["n_features"]) == ("classification", 150, 4)
    assert body["classes"] == ["setosa", "versicolor", "virginica"]
    assert body["feature_names"][0] == "sepal_length_cm"
    # The same bytes as the built-in iris: equal data, equal hash.
    iris = next(
        d for d in (await client.get("/v1/datasets")).json()["items"] if d["name"] == "iris"
    )
    assert body["sha256"] == iris["sha256"]

    x, y = decode_arrays(db.get(Dataset, body["id"]))
    rows = list(csv.reader(io.StringIO(iris_csv().decode())))[1:]
    np.testing.assert_allclose(x, np.array([r[:4] for r in rows], dtype=np.float32))
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert [body["classes"][i] for i in y] == [r[4] for r in rows]

    fetched = await client.get(body and f"/v1/datasets/{body['id']}")
    assert fetched.json() == body


async def test_features_are_stored_as_safetensors_saves_them(
    client: httpx.AsyncClient, db: Rows
) -> None:
    """A file upload's features are written into the database in 1 MiB pieces from the parsed
    array's memory (app/blobs.py: SQLite's incremental blob I/O, Postgres' COPY), never joined:
    what is stored is still byte for byte the safetensors file of the array, and its hash the
    one over those bytes and the targets'. 30,000 x 20 float32 is 2.3 pieces."""
    x = np.random.default_rng(3).normal(size=(30_000, 20)).astype(np.float32)
    labels = np.array(["a", "b", "c"])[np.arange(len(x)) % 3]
    text = io.StringIO()
    text.write(",".join(f"f{i}" for i in range(20)) + ",label\n")
    for row, label in zip(x.tolist(), labels, strict=True):
        text.write(",".join(map(repr, row)) + f",{label}\n")  # repr: float32 values exactly
    response = await upload_csv(client, text.getvalue().encode(), target="label")
    assert response.status_code == 201, response.text
    row = db.get(Dataset, response.json()["id"])
    assert row is not None
    features, targets = st_save({"x": x}), st_save({"y": np.arange(len(x)) % 3})
    assert bytes(row.features) == features
    assert bytes(row.targets) == targets
    assert row.sha256 == hashlib.sha256(features + targets).hexdigest()


async def test_sqlite_keeps_the_features_column_last(database_url: str, db: Rows) -> None:
    """SQLite leaves a zeroblob unbuilt only at the end of a row: with any column after
    `features` that a new row fills, every upload would build its features' size in zeros in
    memory, twice (migration 0016)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the column order only matters to SQLite")
    with db.begin() as session:
        columns = session.execute(text("PRAGMA table_info(datasets)")).all()
    assert columns[-1].name == "features"


async def test_sqlite_checkpoints_an_upload_after_its_answer(
    database_url: str, client: httpx.AsyncClient, app: Any
) -> None:
    """An upload's commit leaves its features in SQLite's WAL (the automatic checkpoint would
    copy them into the database file inside the request: ~0.4 s for 72 MB); the route copies
    them once its 201 is sent, and the connection's automatic checkpoint is on again."""
    if not database_url.startswith("sqlite"):
        pytest.skip("a SQLite WAL")
    path = Path(database_url.removeprefix("sqlite:///"))
    x = np.random.default_rng(0).normal(size=(120_000, 20))
    table = pa.table({**{f"f{i}": x[:, i] for i in range(20)}, "y": np.arange(120_000) % 2})
    data = io.BytesIO()
    pa_csv.write_csv(table, data)  # 9.6 MB of float32: 2,300 pages, past the 1,000 that trigger
    engine = app.state.engine
    checkpoint(engine)
    before = path.stat().st_size
    with app.state.sessionmaker() as session:
        data.seek(0)
        service.create_from_csv(session, owner=None, name="wal", data=data, target="y",
                                task=None, settings=app.state.settings)  # fmt: skip
        session.commit()
    assert path.stat().st_size - before < 1_000_000  # the commit copied nothing
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    checkpoint(engine)
    assert path.stat().st_size - before > 9_000_000
    before = path.stat().st_size
    response = await client.post(
        "/v1/datasets", files={"file": ("w.csv", data.getvalue(), "text/csv")},
        data={"target": "y", "name": "wal"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert path.stat().st_size - before > 9_000_000  # copied once the answer was sent


async def test_json_upload_classification_keeps_label_spelling(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/datasets",
        json={
            "name": "tiny",
            "features": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]],
            "targets": [10, 2, 2, 10],
            "feature_names": ["a", "b"],
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["task"] == "classification"
    assert body["classes"] == [2, 10]  # integers sorted as numbers, not as text
    assert body["feature_names"] == ["a", "b"]


async def test_json_labels_mixing_integers_and_whole_floats_are_classes(
    client: httpx.AsyncClient,
) -> None:
    # JSON writers emit 1.0 for a float that holds a whole number; with 0 and 2 beside it these
    # are three classes, not a 500 (Python 3.11's int has no is_integer).
    response = await client.post(
        "/v1/datasets",
        json={
            "name": "mixed",
            "features": [[0.0], [1.0], [2.0], [3.0]],
            "targets": [0, 1.0, 2, 1],
            "task": "classification",
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["classes"] == [0, 1, 2]
    fractional = await client.post(
        "/v1/datasets",
        json={
            "name": "m",
            "features": [[0.0], [1.0]],
            "targets": [0, 1.5],
            "task": "classification",
        },
    )
    assert fractional.status_code == 422 and "fractional" in fractional.json()["detail"]


async def test_json_upload_regression_with_two_outputs(client: httpx.AsyncClient, db: Rows) -> None:
    response = await client.post(
        "/v1/datasets",
        json={
            "name": "two outputs",
            "features": [[1.0], [2.0], [3.0]],
            "targets": [[0.5, 1.5], [1.0, 2.0], [1.5, 2.5]],
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["task"], body["n_outputs"], body["classes"]) == ("regression", 2, None)
    _, y = decode_arrays(db.get(Dataset, body["id"]))
    assert y.dtype == np.float32 and y.shape == (3, 2)
    np.testing.assert_allclose(y[:, 1], [1.5, 2.0, 2.5])


async def test_csv_task_is_inferred_from_the_target_column(client: httpx.AsyncClient) -> None:
    diabetes = BUILTINS["diabetes"].read_bytes()
    body = (await upload_csv(client, diabetes, target="progression")).json()
    assert (body["task"], body["n_outputs"]) == ("regression", 1)
    digits = BUILTINS["digits"].read_bytes()
    body = (await upload_csv(client, digits, target="digit")).json()
    assert body["task"] == "classification" and body["classes"] == list(range(10))
    # Asked for, a numeric target is a regression target even with few values.
    forced = await upload_csv(client, digits, target="digit", task="regression")
    assert forced.json()["task"] == "regression"


async def test_csv_with_two_regression_targets(client: httpx.AsyncClient) -> None:
    data = b"a,b,t1,t2\n1,2,0.5,3\n2,3,0.25,4\n4,5,0.125,5\n"
    body = (await upload_csv(client, data, target="t1, t2")).json()
    assert (body["task"], body["n_outputs"], body["target_names"]) == (
        "regression",
        2,
        ["t1", "t2"],
    )
    assert body["feature_names"] == ["a", "b"]


async def test_delete_while_queued_is_409_then_204(client: httpx.AsyncClient, db: Rows) -> None:
    dataset = (await upload_csv(client, iris_csv(), target="species")).json()
    job = await client.post(
        "/v1/jobs",
        json={
            "network": IRIS_NETWORK,
            "dataset": dataset["id"],
            "training": {"loss": "categorical_crossentropy"},
        },
    )
    assert job.status_code == 202, job.text
    assert_error(await client.delete(f"/v1/datasets/{dataset['id']}"), 409, "queued or running")
    assert (await client.post(f"/v1/jobs/{job.json()['id']}/cancel")).status_code == 202
    assert (await client.delete(f"/v1/datasets/{dataset['id']}")).status_code == 204
    assert_error(await client.get(f"/v1/datasets/{dataset['id']}"), 404, "not found")
    assert dataset["id"] not in {
        d["id"] for d in (await client.get("/v1/datasets")).json()["items"]
    }
    # The cancelled job still names its dataset (a tombstone without the arrays).
    assert db.get(Job, job.json()["id"]).dataset_id == dataset["id"]
    assert db.get(Dataset, dataset["id"]).features == b""
    assert (await client.get(f"/v1/jobs/{job.json()['id']}")).status_code == 200


async def test_delete_unreferenced_removes_the_row(client: httpx.AsyncClient, db: Rows) -> None:
    dataset = (await upload_csv(client, iris_csv(), target="species")).json()
    assert (await client.delete(f"/v1/datasets/{dataset['id']}")).status_code == 204
    assert db.get(Dataset, dataset["id"]) is None
    assert_error(await client.delete(f"/v1/datasets/{dataset['id']}"), 404)


async def test_builtins_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    iris = next(
        d for d in (await client.get("/v1/datasets")).json()["items"] if d["name"] == "iris"
    )
    assert_error(await client.delete(f"/v1/datasets/{iris['id']}"), 409, "built-in")


async def test_other_keys_datasets_are_404(client: httpx.AsyncClient, db: Rows) -> None:
    with db.begin() as session:
        (_, secret_a), (_, secret_b) = create_key(session, name="a"), create_key(session, name="b")
    a = {"Authorization": f"Bearer {secret_a}"}
    b = {"Authorization": f"Bearer {secret_b}"}
    files = {"file": ("d.csv", iris_csv(), "text/csv")}
    mine = await client.post(
        "/v1/datasets", files=files, data={"target": "species", "name": "a's"}, headers=a
    )
    assert mine.status_code == 201
    dataset_id = mine.json()["id"]
    assert (await client.get(f"/v1/datasets/{dataset_id}", headers=a)).status_code == 200
    assert_error(await client.get(f"/v1/datasets/{dataset_id}", headers=b), 404)
    assert_error(await client.delete(f"/v1/datasets/{dataset_id}", headers=b), 404)
    assert_error(await client.get(f"/v1/datasets/{dataset_id}"), 404)  # keyless isn't a's either
    listed_b = {d["id"] for d in (await client.get("/v1/datasets", headers=b)).json()["items"]}
    assert dataset_id not in listed_b and len(listed_b) == len(BUILTINS)


async def test_dataset_cell_limit_is_a_413(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, max_dataset_cells=100))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            response = await upload_csv(client, iris_csv(), target="species")
            assert_error(response, 413, "more than 100 values", "data row 21 of 5 columns")


def test_concurrent_registration_stores_each_builtin_once(database_url: str) -> None:
    """Several API processes starting at once (threads here, each its own connection)."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import func, select

    from app.db import make_engine, make_sessionmaker
    from app.services.datasets import register_builtins

    engine = make_engine(database_url)
    sessionmaker = make_sessionmaker(engine)

    def register() -> list[str]:
        with sessionmaker.begin() as session:
            return register_builtins(session)

    try:
        with ThreadPoolExecutor(3) as pool:
            added = [name for names in pool.map(lambda _: register(), range(3)) for name in names]
        assert sorted(added) == sorted(BUILTINS)  # each added by exactly one of them
        with sessionmaker() as session:
            assert session.scalar(select(func.count()).select_from(Dataset)) == len(BUILTINS)
    finally:
        engine.dispose()
