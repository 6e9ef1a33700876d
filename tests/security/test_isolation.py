"""Tenant isolation: every dataset, job and model belongs to the key that created it. Key B gets
404 on all of key A's rows — the same answer as for an id that doesn't exist, so B can't even
learn that they do — and never sees them in a list. Through real HTTP on SQLite and Postgres.

Key A's model is trained for real (see the `trained` fixture).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import models

ROW = [5.1, 3.5, 1.4, 0.2]
CSV_IN = b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n5.1,3.5,1.4,0.2\n"
INFER = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
NOBODY = "f" * 32  # a well-formed id no row has


@pytest.fixture(scope="module")
def owned_by_a(api: Any, trained: dict[str, str]) -> dict[str, str]:
    """Key A's dataset, its trained job and model, and a second job still queued."""
    job = {
        "network": models.spec.IRIS_NETWORK,
        "dataset": trained["dataset"],
        "training": {**models.spec.IRIS_TRAINING, "epochs": 2},
    }
    r = api.http.post("/v1/jobs", json=job, headers=api.a)
    assert r.status_code == 202, r.text
    # the model under a name of A's: B's names are another namespace
    registered = api.http.post(
        "/v1/registered-models/isolation/versions",
        json={"model_id": trained["model"]},
        headers=api.a,
    )
    assert registered.status_code == 201, registered.text
    return {**trained, "queued": r.json()["id"], "name": "isolation"}


# (method, path, request keyword arguments, what key A gets)
A_ROUTES: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/v1/datasets/{dataset}", {}, 200),
    ("GET", "/v1/jobs/{job}", {}, 200),
    ("GET", "/v1/jobs/{job}/metrics", {}, 200),
    ("GET", "/v1/models/{model}", {}, 200),
    ("GET", "/v1/models/{model}/weights", {}, 200),
    ("POST", "/v1/models/{model}/predict", {"json": {"inputs": [ROW]}}, 200),
    ("POST", "/v1/models/{model}/predict.csv",
     {"content": CSV_IN, "headers": {"content-type": "text/csv"}}, 200),
    ("GET", "/v1/models/{model}/keras", {}, 200),
    ("GET", "/v1/models/{model}/onnx", {}, 200),
    ("GET", "/v2/models/{model}", {}, 200),
    ("GET", "/v2/models/{model}/ready", {}, 200),
    ("POST", "/v2/models/{model}/infer", {"json": INFER}, 200),
    ("GET", "/dashboard/jobs/{job}", {}, 200),
    ("GET", "/dashboard/models/{model}", {}, 200),
    ("GET", "/v1/registered-models/{name}", {}, 200),
    ("GET", "/dashboard/names/{name}", {}, 200),
    # Changes last: B's attempt must leave them as they are, A's own then works.
    ("PUT", "/v1/registered-models/{name}/aliases/production", {"json": {"version": 1}}, 200),
    ("POST", "/v1/jobs/{queued}/cancel", {}, 202),
    ("DELETE", "/v1/datasets/{dataset}", {}, 204),
]  # fmt: skip


def _call(api: Any, key: dict[str, str], method: str, path: str, kwargs: dict[str, Any]) -> Any:
    kwargs = dict(kwargs)
    headers = {**key, **kwargs.pop("headers", {})}
    return api.http.request(method, path, headers=headers, **kwargs)


def test_key_b_lists_none_of_key_a_rows(api: Any, owned_by_a: dict[str, str]) -> None:
    for path, ref in (("/v1/datasets", "dataset"), ("/v1/jobs", "job"), ("/v1/models", "model")):
        ids_b = {item["id"] for item in api.http.get(path, headers=api.b).json()["items"]}
        assert owned_by_a[ref] not in ids_b
        ids_a = {item["id"] for item in api.http.get(path, headers=api.a).json()["items"]}
        assert owned_by_a[ref] in ids_a
    page = api.http.get("/dashboard", headers=api.b).text
    assert owned_by_a["job"] not in page
    names_b = api.http.get("/v1/registered-models", headers=api.b).json()["items"]
    assert owned_by_a["name"] not in {n["name"] for n in names_b}
    names_a = api.http.get("/v1/registered-models", headers=api.a).json()["items"]
    assert owned_by_a["name"] in {n["name"] for n in names_a}
    page = api.http.get("/dashboard/names", headers=api.b).text
    assert owned_by_a["name"] not in page and owned_by_a["model"] not in page


def test_key_b_cannot_train_on_key_a_dataset(api: Any, owned_by_a: dict[str, str]) -> None:
    before = api.row_counts()
    job = {
        "network": models.spec.IRIS_NETWORK,
        "dataset": owned_by_a["dataset"],
        "training": models.spec.IRIS_TRAINING,
    }
    r = api.http.post("/v1/jobs", json=job, headers=api.b)
    assert r.status_code == 422
    assert "not found" in r.json()["detail"]
    assert api.row_counts() == before


def test_both_keys_see_the_builtins(api: Any) -> None:
    names_b = {item["name"] for item in api.http.get("/v1/datasets", headers=api.b).json()["items"]}
    assert "iris" in names_b


# Last in the file: its final cases cancel a job and delete the dataset.
@pytest.mark.parametrize(
    "method, path, kwargs, a_status", A_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in A_ROUTES]
)
def test_key_b_gets_404_on_key_a_rows(
    api: Any,
    owned_by_a: dict[str, str],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    a_status: int,
) -> None:
    before = api.row_counts()
    r = _call(api, api.b, method, path.format(**owned_by_a), kwargs)
    assert r.status_code == 404, r.text
    # Word for word the answer for an id that names nothing, apart from the id itself.
    ref = next(k for k in owned_by_a if "{" + k + "}" in path)
    missing = _call(api, api.b, method, path.format(**{**owned_by_a, ref: NOBODY}), kwargs)
    assert missing.status_code == 404
    assert r.json() == json.loads(missing.text.replace(NOBODY, owned_by_a[ref]))
    assert owned_by_a[ref] not in str(r.headers)
    assert api.row_counts() == before

    # Key A reaches the same row: the 404 above is about ownership, not a broken route.
    r = _call(api, api.a, method, path.format(**owned_by_a), kwargs)
    assert r.status_code == a_status, r.text
