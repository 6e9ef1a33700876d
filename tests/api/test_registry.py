"""Model names, versions and aliases through the API, on SQLite and Postgres: register at submit
time and afterwards, address a model by name, version or alias on /v1 and /v2, move aliases
(the very next request follows), names per key, and refusals that store nothing."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.auth import create_key
from app.services import registry
from app.tables import ModelAlias, ModelVersion, RegisteredModel
from tests.interop.conftest import IRIS_NETWORK, IRIS_TRAINING, train_queued_job

pytestmark = pytest.mark.anyio
ROW = [[5.1, 3.5, 1.4, 0.2]]
INFER = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW[0]}]}


def _keys(app: Any) -> tuple[dict[str, str], dict[str, str]]:
    with app.state.sessionmaker.begin() as session:
        _, a = create_key(session, name="a")
        _, b = create_key(session, name="b")
    return {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}


async def _train(app: Any, client: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> str:
    job = {"network": IRIS_NETWORK, "training": IRIS_TRAINING, "dataset": "iris", **extra}
    submitted = await client.post("/v1/jobs", json=job, headers=headers)
    assert submitted.status_code == 202, submitted.text
    return train_queued_job(app.state.sessionmaker, submitted.json()["id"])


def _counts(app: Any) -> tuple[int, ...]:
    with app.state.sessionmaker() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(t)) or 0
            for t in (RegisteredModel, ModelVersion, ModelAlias)
        )


async def _model_id(client: httpx.AsyncClient, ref: str, headers: dict[str, str]) -> str:
    response = await client.get(f"/v1/models/{ref}", headers=headers)
    assert response.status_code == 200, (ref, response.text)
    return str(response.json()["id"])


async def test_names_versions_and_aliases(app: Any, client: httpx.AsyncClient) -> None:
    a, b = _keys(app)
    first = await _train(app, client, a, register_as="iris")  # version 1, at submit time
    second = await _train(app, client, a)
    registered = await client.post(
        "/v1/registered-models/iris/versions", json={"model_id": second}, headers=a
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["version"] == 2

    # an unversioned name is the latest version while there is no production alias
    assert await _model_id(client, "iris", a) == second
    assert await _model_id(client, "iris@1", a) == first
    moved = await client.put(
        "/v1/registered-models/iris/aliases/production", json={"version": 1}, headers=a
    )
    assert moved.status_code == 200 and moved.json()["aliases"] == {"production": 1}
    # the predictor of version 2 is cached now; the name follows the alias on the next request
    assert await _model_id(client, "iris", a) == first
    predicted = await client.post("/v1/models/iris/predict", json={"inputs": ROW}, headers=a)
    assert predicted.status_code == 200, predicted.text
    inferred = await client.post("/v2/models/iris/infer", json=INFER, headers=a)
    assert inferred.status_code == 200 and inferred.json()["model_version"] == "1"
    await client.put("/v1/registered-models/iris/aliases/production", json={"version": 2},
                     headers=a)  # fmt: skip
    inferred = await client.post("/v2/models/iris/infer", json=INFER, headers=a)
    assert inferred.json()["model_version"] == "2"

    # OIP: versions, and a version or alias in the URL
    meta = await client.get("/v2/models/iris", headers=a)
    assert meta.status_code == 200 and meta.json()["versions"] == ["1", "2"]
    versioned = await client.post("/v2/models/iris/versions/1/infer", json=INFER, headers=a)
    assert versioned.status_code == 200 and versioned.json()["model_version"] == "1"
    await client.put("/v1/registered-models/iris/aliases/staging", json={"version": 1},
                     headers=a)  # fmt: skip
    assert await _model_id(client, "iris@staging", a) == first
    by_alias = await client.get("/v2/models/iris/versions/staging/ready", headers=a)
    assert by_alias.status_code == 200

    listed = await client.get("/v1/registered-models", headers=a)
    (entry,) = listed.json()["items"]
    assert [v["model_id"] for v in entry["versions"]] == [first, second]
    assert entry["aliases"] == {"production": 2, "staging": 1}

    # names are per key: another key sees none of it, and can't register a's model
    assert (await client.get("/v1/models/iris", headers=b)).status_code == 404
    assert (await client.get("/v2/models/iris", headers=b)).status_code == 404
    assert (await client.get("/v1/registered-models/iris", headers=b)).status_code == 404
    stolen = await client.post(
        "/v1/registered-models/iris/versions", json={"model_id": first}, headers=b
    )
    assert stolen.status_code == 404


async def test_unknown_and_invalid_names_are_refused_and_store_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    a, _ = _keys(app)
    model = await _train(app, client, a, register_as="iris")
    before = _counts(app)
    cases = [
        ("GET", "/v1/models/nope", None, 404, "'nope' not found"),
        ("GET", "/v1/registered-models/iris@9", None, 422, "pattern"),
        ("GET", "/v2/models/iris/versions/9", None, 404, "no version '9'"),
        ("GET", "/v2/models/iris/versions/canary", None, 404, "no alias 'canary'"),
        # versions are ASCII digits that fit the column; anything else names no version
        ("GET", "/v1/models/iris@²", None, 404, "no version or alias '²'"),
        ("GET", "/v1/models/iris@١", None, 404, "no version or alias '١'"),
        ("GET", "/v1/models/iris@" + "9" * 30, None, 404, "no version '" + "9" * 30),
        ("GET", "/v1/models/iris@2147483648", None, 404, "no version '2147483648'"),
        ("GET", "/v2/models/iris/versions/²/ready", None, 404, "an alias starts with a letter"),
        ("GET", "/v2/models/iris/versions/" + "9" * 20, None, 404, "no version"),
        ("POST", "/v1/models/iris@0/predict", {"inputs": ROW}, 404, "no version '0'"),
        ("GET", "/dashboard/models/iris@²", None, 404, "no version or alias '²'"),
        ("GET", "/dashboard/models/iris@staging", None, 404, "no alias 'staging'"),
        ("DELETE", "/v1/models/iris@3", None, 404, "no version '3'"),
        ("PUT", "/v1/registered-models/iris/aliases/production", {"version": 7}, 404,
         "no version 7"),
        ("PUT", "/v1/registered-models/iris/aliases/2x", {"version": 1}, 422, "alias"),
        ("PUT", "/v1/registered-models/nope/aliases/production", {"version": 1}, 404,
         "'nope' not found"),
        ("DELETE", "/v1/registered-models/iris/aliases/production", None, 404,
         "no alias 'production'"),
        ("POST", "/v1/registered-models/Iris!/versions", {"model_id": model}, 422, "pattern"),
        ("POST", "/v1/registered-models/" + "a" * 32 + "/versions", {"model_id": model}, 422,
         "reads as a model id"),
        ("POST", "/v1/registered-models/iris/versions", {"model_id": "0" * 32}, 404,
         "not found"),
        ("POST", "/v1/jobs", {"network": IRIS_NETWORK, "training": IRIS_TRAINING,
                              "dataset": "iris", "register_as": "Not A Name"}, 422,
         "register_as"),
    ]  # fmt: skip
    for method, url, body, status, words in cases:
        response = await client.request(method, url, json=body, headers=a)
        assert response.status_code == status, (url, response.text)
        message = response.json().get("detail") or response.json()["error"]
        assert words in message, (url, message)
    assert _counts(app) == before


async def test_concurrent_writers_of_one_name_take_turns(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Two transactions registering under one name (new or existing) or making one alias at
    once: the second waits for the first (the name's row locked, or its unique index) and then
    builds on it, instead of failing on a duplicate version, name or alias."""
    model = await _train(app, client, {})
    sessions = app.state.sessionmaker

    def concurrently(write: Any) -> list[Any]:
        """`write` in a transaction held open while a second thread runs it too."""
        results: list[Any] = []

        def second() -> None:
            with sessions.begin() as session:
                results.append(write(session))

        with sessions.begin() as session:
            results.append(write(session))
            thread = threading.Thread(target=second)
            thread.start()
            thread.join(0.5)  # on Postgres it is waiting on our lock now; SQLite: on BEGIN
        thread.join(30)
        return results

    def register(name: str) -> Any:
        return lambda s: registry.register(s, owner=None, name=name, model_id=model).version

    assert concurrently(register("fresh")) == [1, 2]
    assert concurrently(register("fresh")) == [3, 4]
    alias = concurrently(
        lambda s: registry.aliases(
            s, registry.set_alias(s, owner=None, name="fresh", alias="production", version=2)
        )
    )
    assert alias == [{"production": 2}, {"production": 2}]
    assert _counts(app) == (1, 4, 1)


async def test_the_openapi_document_says_a_model_can_be_named(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, method, param in [
        ("/v1/models/{model_id}", "get", "model_id"),
        ("/v1/models/{model_id}/predict", "post", "model_id"),
        ("/v1/models/{model_id}/predict.csv", "post", "model_id"),
        ("/v1/models/{model_id}", "delete", "model_id"),
        ("/v2/models/{name}/infer", "post", "name"),
        ("/v2/models/{name}/versions/{version}/infer", "post", "version"),
    ]:
        (described,) = [p for p in paths[path][method]["parameters"] if p["name"] == param]
        words = "an alias" if param == "version" else "`iris@staging`"
        assert words in described["description"], (path, described)
