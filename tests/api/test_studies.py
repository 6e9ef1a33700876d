"""/v1/studies through the ASGI app, on SQLite and Postgres (no worker: trials stay queued;
tests/queue/test_studies.py runs studies on real workers)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from app.auth import create_key
from app.tables import Job, Study, StudyTrial
from tests.api.conftest import Rows, assert_error

pytestmark = pytest.mark.anyio

NETWORK = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dropout", "rate": 0.1},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}
TRAINING = {
    "loss": "categorical_crossentropy",
    "optimizer": "adam",
    "batch_size": 10,
    "epochs": 20,
    "validation_split": 0.2,
}
SPACE = {
    "network.layers[0].units": {"int": [4, 128], "log": True},
    "network.layers[1].rate": {"float": [0.0, 0.6]},
    "training.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": True},
    "training.batch_size": {"choice": [16, 32, 64, "full"]},
}


def study(**changes: Any) -> dict[str, Any]:
    return {
        "name": "iris-search",
        "dataset": "iris",
        "network": NETWORK,
        "training": TRAINING,
        "search_space": SPACE,
        "objective": {"metric": "val_accuracy"},
        "n_trials": 10,
        "max_parallel": 3,
        "seed": 7,
        **changes,
    }


async def test_create_is_202_and_queues_max_parallel_trials(
    client: httpx.AsyncClient, db: Rows
) -> None:
    response = await client.post("/v1/studies", json=study())
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/studies/{body['id']}"
    assert body["status"] == "running"
    assert body["objective"] == {"metric": "val_accuracy", "direction": "maximize"}
    assert body["sampler"] == "tpe" and body["pruner"] == "median"
    assert [t["number"] for t in body["trials"]] == [0, 1, 2]
    assert body["counts"]["running"] == 3 and body["best_trial"] is None
    for trial in body["trials"]:
        job = db.get(Job, trial["job_id"])
        assert job is not None and job.status == "queued"
        params = trial["params"]
        assert set(params) == set(SPACE)
        assert 4 <= params["network.layers[0].units"] <= 128
        assert job.network["layers"][0]["units"] == params["network.layers[0].units"]
        assert job.network["layers"][1]["rate"] == params["network.layers[1].rate"]
        # "adam" was expanded to an object to take the sampled learning rate
        assert job.training["optimizer"] == {
            **job.training["optimizer"],
            "name": "adam",
            "learning_rate": params["training.optimizer.learning_rate"],
        }
        assert job.training["batch_size"] == params["training.batch_size"]
    got = (await client.get(f"/v1/studies/{body['id']}")).json()
    assert got["trials"] == body["trials"]
    listed = (await client.get("/v1/studies")).json()["items"]
    assert [s["id"] for s in listed] == [body["id"]]


async def test_listing_studies_reads_all_their_trials_in_one_query(
    client: httpx.AsyncClient, app: Any
) -> None:
    for seed in range(3):
        r = await client.post("/v1/studies", json=study(seed=seed, n_trials=4, max_parallel=2))
        assert r.status_code == 202, r.text
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = app.state.sessionmaker.kw["bind"]
    event.listen(engine, "before_cursor_execute", seen)
    try:
        listed = (await client.get("/v1/studies")).json()["items"]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len(listed) == 3
    assert all(s["counts"]["running"] == 2 for s in listed)
    # one query for the page's trials, not one per study
    assert sum("FROM study_trials" in s for s in statements) == 1, statements


async def test_the_same_seed_samples_the_same_params(client: httpx.AsyncClient) -> None:
    first = (await client.post("/v1/studies", json=study())).json()
    second = (await client.post("/v1/studies", json=study())).json()
    assert [t["params"] for t in first["trials"]] == [t["params"] for t in second["trials"]]
    other = (await client.post("/v1/studies", json=study(seed=8))).json()
    assert [t["params"] for t in other["trials"]] != [t["params"] for t in first["trials"]]


async def test_a_grid_search_visits_distinct_points(client: httpx.AsyncClient) -> None:
    space = {"network.layers[0].units": {"choice": [4, 8]}, "training.batch_size": {"int": [8, 10]}}
    body = (
        await client.post(
            "/v1/studies",
            json=study(search_space=space, sampler="grid", n_trials=6, max_parallel=6),
        )
    ).json()
    points = {tuple(sorted(t["params"].items())) for t in body["trials"]}
    assert len(points) == 6


async def test_cancel_stops_sampling_and_cancels_queued_trials(
    client: httpx.AsyncClient, db: Rows
) -> None:
    body = (await client.post("/v1/studies", json=study())).json()
    response = await client.post(f"/v1/studies/{body['id']}/cancel")
    assert response.status_code == 202, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert {t["state"] for t in cancelled["trials"]} == {"cancelled"}
    for trial in cancelled["trials"]:
        assert db.get(Job, trial["job_id"]).status == "cancelled"
    again = await client.post(f"/v1/studies/{body['id']}/cancel")
    assert again.json()["trials"] == cancelled["trials"]


BAD = [
    (
        {"search_space": {"network.layers[5].units": {"int": [4, 8]}}},
        ["layers has 3 items", "[5]"],
    ),
    ({"search_space": {"network.layers[0].colour": {"int": [4, 8]}}}, ["colour"]),
    ({"search_space": {"model.units": {"int": [4, 8]}}}, ["starts with 'network.'"]),
    ({"search_space": {"network.layers[0].units": {"float": [0.5, 8.5]}}}, ["units"]),
    ({"search_space": {"network.layers[0].units": {"choice": []}}}, ["non-empty"]),
    ({"search_space": {"network.layers[0].units": {"int": [8, 4]}}}, ["above high"]),
    (
        {"search_space": {"training.optimizer.learning_rate": {"float": [0, 0.1], "log": True}}},
        ["log", "low > 0"],
    ),
    ({"search_space": {"network.layers[0].units": {"int": [4, 8], "mu": 1}}}, ["mu"]),
    ({"search_space": {"network.layers[1].rate": {"float": [0.0, 1.5]}}}, ["rate"]),
    ({"search_space": {}}, ["search_space"]),
    ({"n_trials": 0}, ["n_trials"]),
    ({"n_trials": 1001}, ["n_trials"]),
    ({"max_parallel": 0}, ["max_parallel"]),
    (
        {"objective": {"metric": "val_loss"}, "training": {**TRAINING, "validation_split": 0.0}},
        ["validation_split"],
    ),
    ({"objective": {"metric": "mae"}}, ["no 'mae'", "accuracy"]),
    (
        {
            "network": {
                "layers": [
                    {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
                    {"type": "dense", "units": 8, "activation": "relu"},
                    {"type": "dense", "units": 3, "activation": "softmax"},
                ]
            },
            "search_space": {
                "network.layers[0].units": {"int": [4, 65536]},
                "network.layers[1].units": {"int": [4, 65536]},
            },
        },
        ["parameters", "limit"],
    ),
    (
        {"search_space": {"training.batch_size": {"choice": [16, 32]}}, "sampler": "grid"},
        ["grid has 2 points", "n_trials"],
    ),
    (
        {
            "search_space": {"training.optimizer.learning_rate": {"float": [0.001, 0.1]}},
            "sampler": "grid",
        },
        ["step"],
    ),
    ({"sampler": "bayes"}, ["sampler"]),
    ({"pruner": "asha"}, ["pruner"]),
    ({"dataset": "nope"}, ["dataset 'nope' not found"]),
]


@pytest.mark.parametrize(("changes", "words"), BAD)
async def test_bad_studies_are_422_naming_the_field_and_store_nothing(
    client: httpx.AsyncClient, db: Rows, changes: dict[str, Any], words: list[str]
) -> None:
    response = await client.post("/v1/studies", json=study(**changes))
    assert_error(response, 422, *words)
    assert db.count(Study) == 0
    assert db.count(StudyTrial) == 0
    assert db.count(Job) == 0


async def test_other_keys_studies_are_404(client: httpx.AsyncClient, db: Rows) -> None:
    with db.begin() as session:
        (_, secret_a), (_, secret_b) = create_key(session, name="a"), create_key(session, name="b")
    a = {"Authorization": f"Bearer {secret_a}"}
    b = {"Authorization": f"Bearer {secret_b}"}
    body = (await client.post("/v1/studies", json=study(), headers=a)).json()
    assert (await client.get(f"/v1/studies/{body['id']}", headers=a)).status_code == 200
    assert_error(await client.get(f"/v1/studies/{body['id']}", headers=b), 404)
    assert_error(await client.post(f"/v1/studies/{body['id']}/cancel", headers=b), 404)
    assert (await client.get("/v1/studies", headers=b)).json()["items"] == []
    assert db.get(Study, body["id"]).status == "running"
    # the trials are the key's own jobs
    assert {j["id"] for j in (await client.get("/v1/jobs", headers=a)).json()["items"]} == {
        t["job_id"] for t in body["trials"]
    }


def _events(text: str) -> list[tuple[int, str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def test_the_event_stream_tells_trials_and_the_end_and_resumes(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.post("/v1/studies", json=study(max_parallel=2))).json()
    await client.post(f"/v1/studies/{body['id']}/cancel")
    response = await client.get(f"/v1/studies/{body['id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    kinds = [(kind, data.get("status") or data.get("state")) for _, kind, data in events]
    assert kinds == [
        ("status", "running"),
        ("trial", "running"),
        ("trial", "running"),
        ("trial", "cancelled"),
        ("trial", "cancelled"),
        ("status", "cancelled"),
    ]
    assert events[1][2]["params"] == body["trials"][0]["params"]
    resumed = await client.get(f"/v1/studies/{body['id']}/events", headers={"Last-Event-ID": "4"})
    assert _events(resumed.text) == events[4:]


@pytest.mark.parametrize("bad", ["²", "x", "-1", "1.5", "١٢"])
async def test_a_last_event_id_that_isnt_ours_is_422(client: httpx.AsyncClient, bad: str) -> None:
    body = (await client.post("/v1/studies", json=study())).json()
    response = await client.get(
        f"/v1/studies/{body['id']}/events", headers={"Last-Event-ID": bad.encode()}
    )
    assert response.status_code == 422, response.text


async def test_the_dashboard_lists_and_shows_studies(client: httpx.AsyncClient) -> None:
    body = (await client.post("/v1/studies", json=study(name="<b>search</b>"))).json()
    listing = await client.get("/dashboard/studies")
    assert listing.status_code == 200
    assert body["id"][:8] in listing.text and "&lt;b&gt;search&lt;/b&gt;" in listing.text
    page = await client.get(f"/dashboard/studies/{body['id']}")
    assert page.status_code == 200
    assert page.text.count("<tr><td class=num>") == 3  # the three queued trials
    assert "<b>search</b>" not in page.text
    assert (await client.get("/dashboard/studies/" + "0" * 32)).status_code == 404
