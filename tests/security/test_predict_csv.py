"""predict.csv under attack, through real HTTP: it answered 200 and then cut the connection on a
cell of 1e39 (finite in float64, inf in float32), ignored FITSERVE_MAX_PREDICT_ROWS, silently
used the first of two duplicated feature columns, and wrote labels such as `=cmd|' /C calc'!A0`
into CSV cells unescaped. Each is now refused before the status goes out, or escaped."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest

from tests.security.asgi_kit import http_scope
from tests.security.conftest import IRIS_CSV, Api, train_next_job

HEADER = "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm"
ROW = "5.1,3.5,1.4,0.2"
FORMULAS = {"setosa": "=cmd|' /C calc'!A0", "versicolor": "@SUM(A1)", "virginica": "+A1+B1"}


def _post(api: Api, model: str, text: str, **headers: str) -> tuple[int, str]:
    r = api.http.post(
        f"/v1/models/{model}/predict.csv",
        content=text.encode(),
        headers={**api.a, "Content-Type": "text/csv", **headers},
    )
    return r.status_code, r.text


@pytest.mark.parametrize(
    "cell", ["1e39", "-3.5e38", "1e309", "nan", "inf"], ids=lambda c: c.replace(".", "_")
)
def test_a_value_beyond_float32_is_a_422_before_any_output(
    api: Api, trained: dict[str, str], cell: str
) -> None:
    rows = [ROW] * 50 + [f"{cell},3.5,1.4,0.2"]
    status, text = _post(api, trained["model"], "\n".join([HEADER, *rows]) + "\n")
    assert status == 422, text[:300]
    assert "line 52" in json.loads(text)["detail"]


def test_the_row_limit_applies(api: Api, trained: dict[str, str]) -> None:
    limit = api.settings.max_predict_rows
    status, text = _post(api, trained["model"], "\n".join([HEADER, *[ROW] * (limit + 1)]) + "\n")
    assert status == 413, text[:300]
    assert "FITSERVE_MAX_PREDICT_ROWS" in json.loads(text)["detail"]
    status, text = _post(api, trained["model"], "\n".join([HEADER, *[ROW] * limit]) + "\n")
    assert status == 200 and len(text.strip().splitlines()) == limit + 1


def test_a_repeated_feature_column_is_refused(api: Api, trained: dict[str, str]) -> None:
    status, text = _post(api, trained["model"], f"{HEADER},petal_width_cm\n{ROW},9\n")
    assert status == 422, text[:300]
    assert "'petal_width_cm' more than once" in json.loads(text)["detail"]
    # A repeated column the model doesn't read (a target, a comment) is no ambiguity.
    status, _ = _post(api, trained["model"], f"{HEADER},note,note\n{ROW},a,b\n")
    assert status == 200


def test_formula_labels_are_escaped_and_ndjson_is_strict(api: Api) -> None:
    text = IRIS_CSV.decode()
    for label, formula in FORMULAS.items():
        text = text.replace(f",{label}", f",{formula}")
    r = api.http.post(
        "/v1/datasets",
        files={"file": ("f.csv", text.encode(), "text/csv")},
        data={"target": "species", "name": "formulas"},
        headers=api.a,
    )
    assert r.status_code == 201, r.text
    job = {
        "network": {
            "layers": [
                {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
                {"type": "dense", "units": 3, "activation": "softmax"},
            ]
        },
        "dataset": r.json()["id"],
        "training": {"epochs": 1, "loss": "sparse_categorical_crossentropy"},
    }
    r = api.http.post("/v1/jobs", json=job, headers=api.a)
    assert r.status_code == 202, r.text
    train_next_job(api.engine)
    model = api.http.get(f"/v1/jobs/{r.json()['id']}", headers=api.a).json()["model_id"]
    rows = text.splitlines()[1:][::2]  # 75 rows of all three classes, under the row limit
    body = HEADER + "\n" + "\n".join(line.rsplit(",", 1)[0] for line in rows)
    status, out = _post(api, model, body + "\n")
    assert status == 200, out[:300]
    table = list(csv.reader(io.StringIO(out)))
    assert table[0][0] == "prediction" and all(c.startswith("p_") for c in table[0][1:])
    labels = {row[0] for row in table[1:]}
    assert labels and labels <= {"'" + f for f in FORMULAS.values()}, labels
    status, out = _post(api, model, body + "\n", Accept="application/x-ndjson")
    assert status == 200
    records = [json.loads(line) for line in out.splitlines()]  # strict JSON: no NaN
    assert {r["prediction"] for r in records} <= set(FORMULAS.values())  # JSON needs no escape


def test_a_body_past_the_row_limit_is_refused_before_the_rest_is_read(
    api: Api, trained: dict[str, str]
) -> None:
    """The CSV is parsed block by block as it arrives (Arrow's streaming reader in a thread):
    the 413 goes out once a block passes FITSERVE_MAX_PREDICT_ROWS, with most of a body of
    1.9 MB (1,000 times the limit here) never read: the parser reads two blocks ahead at most."""
    chunk = ("\n".join([ROW] * 1000) + "\n").encode()  # 16 KB
    total = 1_900_000 // len(chunk)
    received = 0
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        nonlocal received
        received += 1
        if received > total + 1:  # the body is over: wait, as a server waits for a disconnect
            await asyncio.sleep(3600)
        body = (HEADER + "\n").encode() if received == 1 else chunk
        return {"type": "http.request", "body": body, "more_body": received <= total}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"text/csv"),
        (b"transfer-encoding", b"chunked"),
        (b"authorization", api.a["Authorization"].encode()),
    ]
    scope = http_scope(f"/v1/models/{trained['model']}/predict.csv", headers)
    asyncio.run(api.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 413, sent
    assert b"FITSERVE_MAX_PREDICT_ROWS" in b"".join(m.get("body", b"") for m in sent)  # type: ignore[misc]
    assert received < total / 2, f"{received} of {total + 1} chunks read before the 413"
