"""DELETE /v1/models/{ref} and /v1/jobs/{id}, on SQLite and Postgres: the rows and the weight and
checkpoint blobs are really gone (counted), and the refusals (a job still queued, a job whose
model exists, a model an alias points at) are 409s that say what to do and delete nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.tables import Job, JobCheckpoint, JobClaim, JobMetric, Model, ModelVersion
from tests.api.test_registry import _keys, _train
from tests.interop.conftest import IRIS_NETWORK, IRIS_TRAINING

pytestmark = pytest.mark.anyio


def _rows(app: Any, job_id: str, model_id: str) -> dict[str, int]:
    """Rows of this job and model in each table, and the bytes of weights and checkpoints."""
    with app.state.sessionmaker() as session:
        counts = {
            "jobs": session.scalar(select(func.count()).where(Job.id == job_id)),
            "job_metrics": session.scalar(select(func.count()).where(JobMetric.job_id == job_id)),
            "job_claims": session.scalar(select(func.count()).where(JobClaim.job_id == job_id)),
            "checkpoint_bytes": session.scalar(
                select(func.coalesce(func.sum(func.length(JobCheckpoint.data)), 0)).where(
                    JobCheckpoint.job_id == job_id
                )
            ),
            "models": session.scalar(select(func.count()).where(Model.id == model_id)),
            "weight_bytes": session.scalar(
                select(func.coalesce(func.sum(func.length(Model.weights)), 0)).where(
                    Model.id == model_id
                )
            ),
            "versions": session.scalar(
                select(func.count()).where(ModelVersion.model_id == model_id)
            ),
        }
    return {k: int(v or 0) for k, v in counts.items()}


def _add_epoch_rows(app: Any, job_id: str) -> None:
    """What a worker writes per epoch beside the model: a metrics row and a checkpoint."""
    with app.state.sessionmaker.begin() as session:
        session.add(JobMetric(job_id=job_id, epoch=1, loss=0.5, values={"loss": 0.5}))
        session.add(JobCheckpoint(job_id=job_id, epoch=1, lease_token=1, data=b"\x00" * 4096))


async def test_delete_a_model_then_its_job(app: Any, client: httpx.AsyncClient) -> None:
    a, b = _keys(app)
    model_id = await _train(app, client, a, register_as="iris")
    job_id = (await client.get(f"/v1/models/{model_id}", headers=a)).json()["job_id"]
    _add_epoch_rows(app, job_id)
    before = _rows(app, job_id, model_id)
    assert before["models"] == 1 and before["weight_bytes"] > 0 and before["versions"] == 1
    assert before["job_metrics"] >= 1 and before["checkpoint_bytes"] == 4096

    refusals = [
        (client.delete(f"/v1/jobs/{job_id}", headers=a), 409, "delete the model first"),
        (client.delete(f"/v1/models/{model_id}", headers=b), 404, "not found"),
        (client.delete(f"/v1/jobs/{job_id}", headers=b), 404, "not found"),
    ]
    await client.put("/v1/registered-models/iris/aliases/production", json={"version": 1},
                     headers=a)  # fmt: skip
    refusals.append((client.delete("/v1/models/iris", headers=a), 409, "iris@production"))
    for call, status, words in refusals:
        response = await call
        assert response.status_code == status, response.text
        assert words in response.json()["detail"], response.json()
    assert _rows(app, job_id, model_id) == before

    await client.delete("/v1/registered-models/iris/aliases/production", headers=a)
    assert (
        await client.post(
            f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]}, headers=a
        )
    ).status_code == 200  # fmt: skip  (now cached)
    deleted = await client.delete(f"/v1/models/{model_id}", headers=a)
    assert deleted.status_code == 204, deleted.text
    after = _rows(app, job_id, model_id)
    assert after["models"] == after["weight_bytes"] == after["versions"] == 0
    assert after["checkpoint_bytes"] == 0 and after["jobs"] == 1
    gone = await client.post(f"/v1/models/{model_id}/predict", json={"inputs": [[1, 2, 3, 4]]},
                             headers=a)  # fmt: skip
    assert gone.status_code == 404  # not answered from the predictor cache
    assert (await client.get(f"/v1/jobs/{job_id}", headers=a)).json()["model_id"] is None

    deleted = await client.delete(f"/v1/jobs/{job_id}", headers=a)
    assert deleted.status_code == 204, deleted.text
    assert sum(_rows(app, job_id, model_id).values()) == 0
    assert (await client.get(f"/v1/jobs/{job_id}", headers=a)).status_code == 404


async def test_a_queued_job_is_not_deleted(app: Any, client: httpx.AsyncClient) -> None:
    a, _ = _keys(app)
    job = {"network": IRIS_NETWORK, "training": IRIS_TRAINING, "dataset": "iris"}
    job_id = (await client.post("/v1/jobs", json=job, headers=a)).json()["id"]
    response = await client.delete(f"/v1/jobs/{job_id}", headers=a)
    assert response.status_code == 409 and "cancel it" in response.json()["detail"]
    assert _rows(app, job_id, "")["jobs"] == 1
    await client.post(f"/v1/jobs/{job_id}/cancel", headers=a)
    assert (await client.delete(f"/v1/jobs/{job_id}", headers=a)).status_code == 204
    assert _rows(app, job_id, "")["jobs"] == 0


async def test_a_deleted_versions_number_is_never_given_again(
    app: Any, client: httpx.AsyncClient
) -> None:
    a, _ = _keys(app)
    first = await _train(app, client, a, register_as="iris")
    second = await _train(app, client, a, register_as="iris")
    assert (await client.delete(f"/v1/models/{second}", headers=a)).status_code == 204
    third = await _train(app, client, a, register_as="iris")
    name = (await client.get("/v1/registered-models/iris", headers=a)).json()
    assert [(v["version"], v["model_id"]) for v in name["versions"]] == [(1, first), (3, third)]
    gone = await client.get("/v1/models/iris@2", headers=a)
    assert gone.status_code == 404 and "no version '2'" in gone.json()["detail"]
    assert (await client.get("/v1/models/iris", headers=a)).json()["id"] == third

    # every version's model deleted: the name stays, says so, and numbers go on from 4
    for model in (first, third):
        assert (await client.delete(f"/v1/models/{model}", headers=a)).status_code == 204
    empty = await client.post("/v1/models/iris/predict", json={"inputs": [[1, 2, 3, 4]]},
                              headers=a)  # fmt: skip
    assert empty.status_code == 404 and "no versions left" in empty.json()["detail"]
    page = await client.get("/dashboard/names/iris", headers=a)
    assert page.status_code == 200 and "No versions left" in page.text
    fourth = await _train(app, client, a, register_as="iris")
    name = (await client.get("/v1/registered-models/iris", headers=a)).json()
    assert [(v["version"], v["model_id"]) for v in name["versions"]] == [(4, fourth)]


async def test_a_study_trials_job_is_kept_with_its_study(
    app: Any, client: httpx.AsyncClient
) -> None:
    a, _ = _keys(app)
    study = {
        "name": "kept",
        "dataset": "iris",
        "network": IRIS_NETWORK,
        "training": IRIS_TRAINING,
        "search_space": {"training.optimizer.learning_rate": {"float": [1e-3, 0.1]}},
        "objective": {"metric": "loss"},
        "n_trials": 2,
    }
    created = await client.post("/v1/studies", json=study, headers=a)
    assert created.status_code == 202, created.text
    await client.post(f"/v1/studies/{created.json()['id']}/cancel", headers=a)
    job_id = created.json()["trials"][0]["job_id"]
    assert (await client.get(f"/v1/jobs/{job_id}", headers=a)).json()["status"] == "cancelled"
    before = _rows(app, job_id, "")
    response = await client.delete(f"/v1/jobs/{job_id}", headers=a)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "job_in_study"
    assert f"trial 0 of study {created.json()['id']}" in response.json()["detail"]
    assert _rows(app, job_id, "") == before
