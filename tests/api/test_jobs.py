"""/v1/jobs through the ASGI app, on SQLite and Postgres (no worker: jobs stay queued unless a
test moves them, as a worker would, by writing the rows)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from app.auth import create_key
from app.config import Settings
from app.main import create_app
from app.tables import Job, JobMetric
from tests.api.conftest import Rows, assert_error, iris_csv

pytestmark = pytest.mark.anyio

IRIS_NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
IRIS_TRAINING = {
    "loss": "categorical_crossentropy",
    "optimizer": "adam",
    "batch_size": 10,
    "epochs": 50,
}


def iris_job(**changes: Any) -> dict[str, Any]:
    return {"network": IRIS_NETWORK, "dataset": "iris", "training": IRIS_TRAINING, **changes}


async def submit(client: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await client.post("/v1/jobs", json=iris_job(**changes))
    assert response.status_code == 202, response.text
    return response.json()


async def test_submit_is_202_with_location_and_the_full_spec(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", json=iris_job(name="first"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["status"], job["epoch"], job["epochs"], job["name"]) == ("queued", 0, 50, "first")
    assert job["metrics"] is None and job["model_id"] is None and job["finished_at"] is None
    # Defaults are filled in, so the stored job says exactly what will train.
    assert job["network"]["layers"][0]["kernel_initializer"] == "glorot_uniform"
    assert job["training"]["optimizer"]["learning_rate"] == 0.001
    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200 and fetched.json() == job


async def test_submit_on_an_uploaded_dataset_by_id(client: httpx.AsyncClient, db: Rows) -> None:
    files = {"file": ("iris.csv", iris_csv(), "text/csv")}
    dataset = (
        await client.post("/v1/datasets", files=files, data={"target": "species", "name": "i"})
    ).json()
    job = await submit(client, dataset=dataset["id"])
    assert job["dataset_id"] == dataset["id"]
    assert db.get(Job, job["id"]).dataset_id == dataset["id"]


@pytest.mark.parametrize(
    ("changes", "status", "words", "loc"),
    [
        (
            {
                "network": {
                    "layers": [
                        {"type": "dense", "units": 3, "activation": "softmax", "input_dim": 5}
                    ]
                }
            },
            422,
            ["expects 5 inputs", "4 features", "input_dim to 4"],
            ["body", "network", "layers", 0, "input_dim"],
        ),
        (
            {
                "network": {
                    "layers": [
                        {"type": "dense", "units": 4, "activation": "softmax", "input_dim": 4}
                    ]
                }
            },
            422,
            ["4 units", "3 classes"],
            ["body", "network", "layers", 0, "units"],
        ),
        (
            {"training": {**IRIS_TRAINING, "loss": "binary_crossentropy"}},
            422,
            ["binary_crossentropy", "3"],
            ["body", "training", "loss"],
        ),
        (
            {
                "dataset": "diabetes",
                "network": {"layers": [{"type": "dense", "units": 1, "input_dim": 10}]},
            },
            422,
            ["categorical_crossentropy", "numbers"],
            ["body", "training", "loss"],
        ),
        ({"dataset": "mnist"}, 422, ["'mnist'", "iris"], ["body", "dataset"]),
        ({"dataset": "0" * 32}, 422, ["not found"], ["body", "dataset"]),
    ],
)
async def test_specs_that_cannot_fit_the_dataset_are_refused_before_queueing(
    client: httpx.AsyncClient,
    db: Rows,
    changes: dict[str, Any],
    status: int,
    words: list[str],
    loc: list[Any],
) -> None:
    body = assert_error(await client.post("/v1/jobs", json=iris_job(**changes)), status, *words)
    assert body["errors"][0]["loc"] == loc
    assert db.count(Job) == 0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"training": {**IRIS_TRAINING, "epochs": 0}}, ["body.training.epochs"]),
        ({"training": {**IRIS_TRAINING, "epochs": "10"}}, ["body.training.epochs"]),
        ({"training": {**IRIS_TRAINING, "optimiser": "adam"}}, ["optimiser", "extra"]),
        ({"colour": "red"}, ["body.colour"]),
        ({"name": "x" * 201}, ["body.name"]),
    ],
)
async def test_malformed_jobs_are_422_naming_the_field(
    client: httpx.AsyncClient, db: Rows, changes: dict[str, Any], words: list[str]
) -> None:
    assert_error(await client.post("/v1/jobs", json=iris_job(**changes)), 422, *words)
    assert db.count(Job) == 0


async def test_list_filters_by_status_newest_first(client: httpx.AsyncClient, db: Rows) -> None:
    first, second, third = [await submit(client, name=str(i)) for i in range(3)]
    with db.begin() as session:
        session.execute(update(Job).where(Job.id == second["id"]).values(status="running"))
    items = (await client.get("/v1/jobs")).json()["items"]
    assert {j["id"] for j in items} == {first["id"], second["id"], third["id"]}
    running = (await client.get("/v1/jobs", params={"status": "running"})).json()["items"]
    assert [j["id"] for j in running] == [second["id"]]
    assert len((await client.get("/v1/jobs", params={"limit": 2})).json()["items"]) == 2
    assert_error(await client.get("/v1/jobs", params={"status": "paused"}), 422, "status")
    assert_error(await client.get("/v1/jobs", params={"limit": 0}), 422, "limit")


async def test_metrics_rows_in_order_and_the_latest_on_the_job(
    client: httpx.AsyncClient, db: Rows
) -> None:
    job = await submit(client)
    losses = [1.1, 0.7, 0.4]
    with db.begin() as session:
        for epoch, loss in enumerate(losses, start=1):
            values = {"epoch": epoch, "loss": loss, "accuracy": 0.3 * epoch, "seconds": 0.01}
            session.add(JobMetric(job_id=job["id"], epoch=epoch, loss=loss, values=values))
        session.execute(update(Job).where(Job.id == job["id"]).values(status="running", epoch=3))
    metrics = (await client.get(f"/v1/jobs/{job['id']}/metrics")).json()["epochs"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["loss"] for m in metrics] == losses
    later = (await client.get(f"/v1/jobs/{job['id']}/metrics", params={"after": 1})).json()[
        "epochs"
    ]
    assert [m["epoch"] for m in later] == [2, 3]
    shown = (await client.get(f"/v1/jobs/{job['id']}")).json()
    assert shown["epoch"] == 3 and shown["metrics"]["loss"] == losses[-1]
    listed = (await client.get("/v1/jobs")).json()["items"][0]
    assert listed["metrics"]["epoch"] == 3


async def test_cancel_queued_running_and_finished(client: httpx.AsyncClient, db: Rows) -> None:
    queued, running, done = [await submit(client) for _ in range(3)]
    with db.begin() as session:
        session.execute(update(Job).where(Job.id == running["id"]).values(status="running"))
        session.execute(
            update(Job)
            .where(Job.id == done["id"])
            .values(status="succeeded", finished_at=datetime.now(UTC))
        )
    response = await client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    # Asking again changes nothing and is not an error.
    assert (await client.post(f"/v1/jobs/{queued['id']}/cancel")).json()["status"] == "cancelled"
    response = await client.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelling"
    assert_error(await client.post(f"/v1/jobs/{done['id']}/cancel"), 409, "succeeded")
    assert db.get(Job, done["id"]).status == "succeeded"
    assert_error(await client.post(f"/v1/jobs/{'f' * 32}/cancel"), 404, "not found")


async def test_queued_job_limit_per_key(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, max_queued_jobs_per_key=2))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            await submit(client)
            await submit(client)
            body = assert_error(
                await client.post("/v1/jobs", json=iris_job()), 409, "2 queued", "limit"
            )
            assert body["code"] == "too_many_queued"


async def test_other_keys_jobs_are_404(client: httpx.AsyncClient, db: Rows) -> None:
    with db.begin() as session:
        (_, secret_a), (_, secret_b) = create_key(session, name="a"), create_key(session, name="b")
    a = {"Authorization": f"Bearer {secret_a}"}
    b = {"Authorization": f"Bearer {secret_b}"}
    response = await client.post("/v1/jobs", json=iris_job(), headers=a)
    job_id = response.json()["id"]
    assert (await client.get(f"/v1/jobs/{job_id}", headers=a)).status_code == 200
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics"):
        assert_error(await client.get(path, headers=b), 404)
    assert_error(await client.post(f"/v1/jobs/{job_id}/cancel", headers=b), 404)
    assert (await client.get("/v1/jobs", headers=b)).json()["items"] == []
    assert db.get(Job, job_id).status == "queued"


def _sorted_by_class(data: bytes) -> bytes:
    """The iris CSV ordered by species, as scikit-learn ships it: the last 30 rows one class."""
    header, *rows = data.decode().strip().split("\n")
    rows.sort(key=lambda row: row.rsplit(",", 1)[1])
    return ("\n".join([header, *rows]) + "\n").encode()


async def _upload(client: httpx.AsyncClient, data: bytes) -> str:
    files = {"file": ("d.csv", data, "text/csv")}
    response = await client.post("/v1/datasets", files=files, data={"target": "species"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_validation_split_of_one_class_carries_a_warning(
    client: httpx.AsyncClient, db: Rows
) -> None:
    dataset = await _upload(client, _sorted_by_class(iris_csv()))
    training = {**IRIS_TRAINING, "validation_split": 0.2}
    job = await submit(client, dataset=dataset, training=training)
    assert job["warning"] is not None
    assert "last 30 of 150" in job["warning"] and "single class ('virginica')" in job["warning"]
    assert "shuffle" in job["warning"]
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["warning"] == job["warning"]
    listed = (await client.get("/v1/jobs")).json()["items"]
    assert [j["warning"] for j in listed if j["id"] == job["id"]] == [job["warning"]]
    assert db.get(Job, job["id"]).warning == job["warning"]
    page = (await client.get(f"/dashboard/jobs/{job['id']}")).text
    assert 'id="warning"' in page and "single class (&#x27;virginica&#x27;)" in page


async def test_a_validation_split_missing_classes_carries_a_warning(
    client: httpx.AsyncClient,
) -> None:
    # Setosa first, then the other two arranged so the validation tail (the last 30 rows) holds
    # 15 versicolor and 15 virginica: two classes, but not setosa.
    header, *rows = _sorted_by_class(iris_csv()).decode().strip().split("\n")
    setosa = [r for r in rows if r.endswith("setosa")]
    others = [r for r in rows if not r.endswith("setosa")]
    data = "\n".join([header, *setosa, *others[15:85], *others[:15], *others[85:]]) + "\n"
    dataset = await _upload(client, data.encode())
    job = await submit(client, dataset=dataset, training={**IRIS_TRAINING, "validation_split": 0.2})
    assert job["warning"] is not None
    assert "miss 1 of the 3 classes in training ('setosa')" in job["warning"], job["warning"]


@pytest.mark.parametrize("validation_split", [0.0, 0.2])
async def test_a_shuffled_dataset_or_no_validation_split_carries_no_warning(
    client: httpx.AsyncClient, validation_split: float
) -> None:
    job = await submit(client, training={**IRIS_TRAINING, "validation_split": validation_split})
    assert job["warning"] is None
    dataset = await _upload(client, _sorted_by_class(iris_csv()))
    if validation_split == 0.0:  # sorted, but nothing is held out
        job = await submit(client, dataset=dataset, training=IRIS_TRAINING)
        assert job["warning"] is None
