"""A completed study registers its best trial's model under the model name made from the study's
name, as that name's next version, and GET /v1/studies/{id} reports it (SQLite and Postgres).
Trials are trained for real and finished as the worker finishes them (claim, `models.fit`,
`finish_job`, then `advance_for_job`), one after another in the test's process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

import models
from app.config import Settings
from app.dataset_codec import decode_arrays
from app.queue.store import claim_next_job, finish_job
from app.studies import conduct
from app.tables import Dataset, Job, Model, ModelVersion, RegisteredModel, Study, StudyTrial
from tests.api.conftest import Rows, assert_error

pytestmark = pytest.mark.anyio

NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
TRAINING = {
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "batch_size": "full",
    "epochs": 3,
    "validation_split": 0.2,
    "standardize": True,
    "seed": 1,
}


def study(**changes: Any) -> dict[str, Any]:
    return {
        "name": "Iris Search",
        "dataset": "iris",
        "network": NETWORK,
        "training": TRAINING,
        "search_space": {"training.optimizer.learning_rate": {"float": [1e-3, 0.3], "log": True}},
        "objective": {"metric": "val_loss"},
        "n_trials": 3,
        "max_parallel": 3,
        "pruner": "none",
        "seed": 5,
        **changes,
    }


def train_queued_trials(app: Any) -> int:
    """Claim, train and finish every queued job, telling its study after each; how many."""
    settings: Settings = app.state.settings
    trained = 0
    while True:
        with app.state.sessionmaker.begin() as session:
            claim = claim_next_job(session, worker="test", lease_seconds=60)
            if claim is None:
                return trained
            dataset = session.get(Dataset, claim.dataset_id)
            assert dataset is not None
            x, y = decode_arrays(dataset)
            result = models.fit(claim.network, claim.training, x, y, device="cpu")
            extra = {"task": dataset.task, "classes": dataset.classes}
            last = result.history[-1].as_dict()
            model = Model(
                owner_id=claim.owner_id,
                dataset_id=claim.dataset_id,
                network=claim.network,
                training=claim.training,
                task=dataset.task,
                classes=dataset.classes,
                metrics=last,
                weights=models.save_model(result, result.network, extra=extra),
            )
            finish_job(
                session,
                job_id=claim.job_id,
                lease_token=claim.lease_token,
                model=model,
                last_epoch=(len(result.history), last),
            )
        with app.state.sessionmaker.begin() as session:
            conduct.advance_for_job(session, job_id=claim.job_id, settings=settings)
        trained += 1


async def test_a_completed_study_registers_its_best_model_as_the_next_version(
    app: Any, client: httpx.AsyncClient, db: Rows
) -> None:
    created = await client.post("/v1/studies", json=study())
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["register_as"] == "iris-search" and body["registered_version"] is None
    assert train_queued_trials(app) == 3

    done = (await client.get(f"/v1/studies/{body['id']}")).json()
    assert done["status"] == "completed"
    best = done["best_trial"]
    values = [t["value"] for t in done["trials"]]
    assert len(set(values)) == 3 and best["value"] == min(values)  # val_loss: minimized
    assert (done["register_as"], done["registered_version"]) == ("iris-search", 1)
    page = (await client.get(f"/dashboard/studies/{body['id']}")).text
    assert 'registered as <a href="/dashboard/names/iris-search"><code>iris-search</code></a> ' \
        "version 1" in page  # fmt: skip
    name = (await client.get("/v1/registered-models/iris-search")).json()
    assert [(v["version"], v["model_id"]) for v in name["versions"]] == [(1, best["model_id"])]
    # the unversioned name predicts with the best model
    assert (await client.get("/v1/models/iris-search")).json()["id"] == best["model_id"]
    row = [[5.1, 3.5, 1.4, 0.2]]
    by_name = await client.post("/v1/models/iris-search/predict", json={"inputs": row})
    by_id = await client.post(f"/v1/models/{best['model_id']}/predict", json={"inputs": row})
    assert by_name.status_code == 200 and by_name.json() == by_id.json()

    # another study whose name makes the same model name adds version 2
    again = (await client.post("/v1/studies", json=study(name="iris-search", seed=6))).json()
    assert again["register_as"] == "iris-search"
    train_queued_trials(app)
    again = (await client.get(f"/v1/studies/{again['id']}")).json()
    assert again["registered_version"] == 2
    name = (await client.get("/v1/registered-models/iris-search")).json()
    assert [v["model_id"] for v in name["versions"]] == [
        best["model_id"],
        again["best_trial"]["model_id"],
    ]
    listed = (await client.get("/v1/studies")).json()["items"]
    assert {(s["id"], s["registered_version"]) for s in listed} == {
        (body["id"], 1),
        (again["id"], 2),
    }


async def test_a_study_with_no_complete_trial_or_cancelled_registers_nothing(
    app: Any, client: httpx.AsyncClient, db: Rows
) -> None:
    cancelled = (await client.post("/v1/studies", json=study(name="cancelled"))).json()
    await client.post(f"/v1/studies/{cancelled['id']}/cancel")
    # every trial of this one fails (its jobs marked failed as a worker would)
    failing = (await client.post("/v1/studies", json=study(name="all failed"))).json()
    with db.begin() as session:
        for trial in session.scalars(
            select(StudyTrial).where(StudyTrial.study_id == failing["id"])
        ):
            job = session.get(Job, trial.job_id)
            assert job is not None
            job.status, job.error, job.finished_at = "failed", "stopped by the test", job.created_at
    with db.begin() as session:
        conduct.advance(session, study_id=failing["id"], settings=app.state.settings)
    for study_id, why in ((cancelled["id"], "cancelled"), (failing["id"], "no trial completed")):
        read = (await client.get(f"/v1/studies/{study_id}")).json()
        assert read["status"] in ("cancelled", "completed") and read["best_trial"] is None
        assert read["registered_version"] is None
        page = (await client.get(f"/dashboard/studies/{study_id}")).text
        assert "nothing registered under" in page and why in page
    assert db.get(Study, failing["id"]).status == "completed"  # type: ignore[union-attr]
    assert db.count(RegisteredModel) == 0 and db.count(ModelVersion) == 0


@pytest.mark.parametrize(
    ("label", "registered"),
    [
        ("Iris Search v2", "iris-search-v2"),
        ("<b>search</b>", "b-search-b"),
        ("Études de cas", "etudes-de-cas"),
        ("__wine.tuning__", "wine.tuning"),
        ("x" * 200, "x" * 63),
    ],
)
async def test_the_model_name_made_from_the_study_name(
    client: httpx.AsyncClient, label: str, registered: str
) -> None:
    created = await client.post("/v1/studies", json=study(name=label))
    assert created.status_code == 202, created.text
    assert created.json()["register_as"] == registered
    page = (await client.get(f"/dashboard/studies/{created.json()['id']}")).text
    assert f'registered as the next version of <a href="/dashboard/names/{registered}">' in page


@pytest.mark.parametrize("label", ["研究", "---", "f" * 32])
async def test_a_study_name_that_makes_no_model_name_is_422_and_stores_nothing(
    client: httpx.AsyncClient, db: Rows, label: str
) -> None:
    response = await client.post("/v1/studies", json=study(name=label))
    assert_error(response, 422, "no model name", "letter")
    assert response.json()["errors"][0]["loc"] == ["body", "name"]
    assert db.count(Study) == 0 and db.count(Job) == 0
