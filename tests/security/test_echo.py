"""Error messages never echo a whole value back: import-keras answered a 30 MB activation string
with a 60 MB 422. Every error's detail and messages stay a few KB, and still name the problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.security.conftest import Api

BIG = "x" * 1_500_000  # under the test body limit (2 MB)
KERAS = {
    "class_name": "Sequential",
    "config": {
        "name": "s",
        "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 4]}},
            {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"}},
        ],
    },
}


def _keras_with(**config: Any) -> dict[str, Any]:
    model = copy.deepcopy(KERAS)
    model["config"]["layers"][1]["config"].update(config)
    return model


CASES = [
    ("/v1/networks/import-keras", _keras_with(activation=BIG)),
    ("/v1/networks/import-keras", _keras_with(**{BIG[:200_000]: 1})),
    ("/v1/networks/import-keras", BIG),
    ("/v1/jobs", {"network": {"layers": [{"type": BIG}]}, "dataset": "iris"}),
    ("/v1/datasets", {"name": "n", "features": [[1.0]], "targets": [BIG, "a"]}),
]


@pytest.mark.parametrize(
    "path, body", CASES, ids=["activation", "option-name", "string", "layer", "label"]
)
def test_errors_do_not_echo_huge_values(api: Api, path: str, body: Any) -> None:
    r = api.http.post(path, json=body, headers=api.a)
    assert 400 <= r.status_code < 500, r.text[:300]
    assert len(r.content) < 20_000, (len(r.content), r.text[:300])
    assert r.json()["detail"]


def test_csv_cells_are_shown_short(api: Api) -> None:
    csv = b"a,target\n" + b"y" * 100_000 + b",1\n2,0\n"
    r = api.http.post(
        "/v1/datasets",
        files={"file": ("d.csv", csv, "text/csv")},
        data={"target": "target", "name": "d"},
        headers=api.a,
    )
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 2_000 and "not a finite number" in r.json()["detail"]
