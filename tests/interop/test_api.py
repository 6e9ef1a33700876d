"""Interop through the API, on SQLite and Postgres: OIP V2 and ONNX outputs equal /v1 predict's
to 1e-5; Keras JSON in and out; every route applies the owner check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from models.keras_json import from_keras_json
from tests.interop.conftest import IRIS_NETWORK, Trained

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.9, 3.0, 5.1, 1.8]]


async def json_predict(client: httpx.AsyncClient, trained: Trained) -> dict[str, Any]:
    response = await client.post(
        f"/v1/models/{trained.model_id}/predict", json={"inputs": ROWS}, headers=trained.headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def oip_request(data: Any, shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": shape or [len(ROWS), 4], "datatype": "FP32", "data": data}
    return {"inputs": [tensor], **extra}


def flat(rows: list[list[float]]) -> list[float]:
    return [v for row in rows for v in row]


async def test_oip_infer_equals_json_predict(client: httpx.AsyncClient, trained: Trained) -> None:
    expected = await json_predict(client, trained)
    url = f"/v2/models/{trained.model_id}/infer"

    response = await client.post(
        url, json=oip_request(flat(ROWS), id="r-1"), headers=trained.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == trained.model_id and body["id"] == "r-1"
    output, label = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output", "FP32", [4, 3])
    got = np.array(output["data"]).reshape(output["shape"])
    np.testing.assert_allclose(got, np.array(expected["outputs"]), rtol=0, atol=1e-5)
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "BYTES", [4])
    assert label["data"] == [str(p) for p in expected["predictions"]]

    # the nested form of the same tensor, and only the requested output
    nested = oip_request(ROWS, outputs=[{"name": "output"}])
    response = await client.post(url, json=nested, headers=trained.headers)
    assert response.status_code == 200, response.text
    (only,) = response.json()["outputs"]
    assert only["name"] == "output"
    np.testing.assert_allclose(only["data"], flat(expected["outputs"]), rtol=0, atol=1e-5)


async def test_oip_metadata_and_ready(client: httpx.AsyncClient, trained: Trained) -> None:
    base = f"/v2/models/{trained.model_id}"
    meta = await client.get(base, headers=trained.headers)
    assert meta.status_code == 200, meta.text
    assert meta.json()["name"] == trained.model_id
    assert meta.json()["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta.json()["outputs"]] == [
        ("output", "FP32", [-1, 3]),
        ("label", "BYTES", [-1]),
    ]
    ready = await client.get(f"{base}/ready", headers=trained.headers)
    assert ready.status_code == 200 and ready.content == b""  # OIP: the status is the answer


BAD_REQUESTS: list[tuple[dict[str, Any], list[str]]] = [
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     ["'input'", "'x'"]),
    (oip_request([1.0, 2.0, 3.0], shape=[1, 3]), ["[1, 3]", "[-1, 4]"]),
    (oip_request([1.0, 2.0, 3.0, 4.0, 5.0], shape=[2, 4]), ["needs 8 values", "has 5"]),
    (oip_request([[1.0, 2.0, 3.0, 4.0]], shape=[2, 4]), ["not in the shape [2, 4]"]),
    ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES",
                  "data": [1, 2, 3, 4]}]}, ["BYTES", "FP32"]),
    (oip_request(flat(ROWS), outputs=[{"name": "probabilities"}]),
     ["probabilities", "output, label"]),
    ({"inputs": [oip_request([1.0, 2.0, 3.0, 4.0], shape=[1, 4])["inputs"][0]] * 2},
     ["inputs", "at most 1"]),
    ({"inputs": []}, ["inputs"]),
    (oip_request(["1.0", 2.0, 3.0, 4.0], shape=[1, 4]), ["data"]),
]  # fmt: skip


async def test_oip_bad_requests_say_what_is_wrong(
    client: httpx.AsyncClient, trained: Trained
) -> None:
    for request_body, words in BAD_REQUESTS:
        response = await client.post(
            f"/v2/models/{trained.model_id}/infer", json=request_body, headers=trained.headers
        )
        assert response.status_code == 400, response.text  # OIP's status for a bad request
        body = response.json()
        assert list(body) == ["error"]  # OIP's error object
        for word in words:
            assert word in body["error"], (word, body["error"])


async def test_onnx_download_equals_json_predict(
    client: httpx.AsyncClient, trained: Trained
) -> None:
    expected = await json_predict(client, trained)
    response = await client.get(f"/v1/models/{trained.model_id}/onnx", headers=trained.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/onnx"
    assert f"model-{trained.model_id}.onnx" in response.headers["content-disposition"]
    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    (got,) = session.run(["output"], {"input": np.array(ROWS, dtype=np.float32)})
    np.testing.assert_allclose(got, np.array(expected["outputs"]), rtol=0, atol=1e-5)


async def test_model_keras_export(client: httpx.AsyncClient, trained: Trained) -> None:
    response = await client.get(f"/v1/models/{trained.model_id}/keras", headers=trained.headers)
    assert response.status_code == 200, response.text
    assert response.json()["class_name"] == "Sequential"
    spec = from_keras_json(response.text)
    assert spec.model_dump(exclude_none=True) == from_keras_json(
        (
            await client.post(
                "/v1/networks/export-keras", json=IRIS_NETWORK, headers=trained.headers
            )
        ).json()  # fmt: skip
    ).model_dump(exclude_none=True)
    assert [layer.type for layer in spec.layers] == ["dense", "dropout", "dense"]


async def test_every_interop_route_checks_the_owner(
    client: httpx.AsyncClient, trained: Trained
) -> None:
    model = trained.model_id
    calls = [
        ("GET", f"/v1/models/{model}/onnx", None),
        ("GET", f"/v1/models/{model}/keras", None),
        ("GET", f"/v2/models/{model}", None),
        ("GET", f"/v2/models/{model}/ready", None),
        ("POST", f"/v2/models/{model}/infer", oip_request(flat(ROWS))),
    ]
    for method, url, body in calls:
        for headers in (trained.other, {}):  # another key; no key (keyless mode sees no owner)
            response = await client.request(method, url, json=body, headers=headers)
            assert response.status_code == 404, (url, response.text)
            detail = response.json().get("detail") or response.json()["error"]
            assert "not found" in detail
        assert (await client.request(method, url, json=body, headers=trained.headers)).is_success
    missing = await client.get("/v2/models/" + "0" * 32, headers=trained.headers)
    assert missing.status_code == 404 and "not found" in missing.json()["error"]


async def test_import_keras_json_from_real_keras(client: httpx.AsyncClient) -> None:
    record = json.loads((DATA / "reuters.json").read_text())
    response = await client.post("/v1/networks/import-keras", content=record["model_json"],
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["total_params"] == record["count_params"]
    # the spec it returns is one /v1/networks/summary accepts as is
    again = await client.post("/v1/networks/summary", json=response.json()["network"])
    assert again.status_code == 200 and again.json()["total_params"] == record["count_params"]

    # what requests.post(url, json=model.to_json()) sends: the string, encoded once more
    twice = await client.post("/v1/networks/import-keras", json=record["model_json"])
    assert twice.status_code == 200 and twice.json() == response.json()

    bad = json.loads((DATA / "unsupported_layer.json").read_text())["model_json"]
    response = await client.post("/v1/networks/import-keras", content=bad,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    assert "GaussianNoise" in response.json()["detail"] and "Dense" in response.json()["detail"]
    assert response.json()["errors"][0]["loc"] == ["body", "config", "layers", 2, "class_name"]


INTEROP_SCHEMAS = ["ModelMetadata", "ServerMetadata", "OipError", "MetadataTensor",
                   "InferenceRequest", "RequestInput", "RequestOutput", "InferenceResponse",
                   "ResponseOutput", "KerasImport"]  # fmt: skip


async def test_docs_describe_every_field_and_the_examples_run(
    client: httpx.AsyncClient, trained: Trained
) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in INTEROP_SCHEMAS:
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
            assert "examples" in prop, f"{name}.{field} has no example"

    example = schemas["InferenceRequest"]["examples"][0]
    response = await client.post(
        f"/v2/models/{trained.model_id}/infer", json=example, headers=trained.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [example["inputs"][0]["shape"][0], 3]

    body = spec["paths"]["/v1/networks/import-keras"]["post"]["requestBody"]["content"]
    keras_model = body["application/json"]["schema"]["examples"][0]
    response = await client.post("/v1/networks/import-keras", json=keras_model)
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["total_params"] == 139
