"""/v2 through Triton's own client, tritonclient.http (and its asyncio client), with its defaults,
against uvicorn on a free loopback port, on SQLite and Postgres: health, server and model
metadata, binary and JSON inference, versioned calls, and errors it can read. Outputs must equal
/v1 predict's exactly (float32 for float32)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from app.config import Settings
from app.main import create_app
from tests.conftest import serve
from tests.interop.conftest import IRIS_NETWORK, IRIS_TRAINING, train_queued_job

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.9, 3.0, 5.1, 1.8]]
WHOLE_ROWS = [[5, 3, 1, 0], [6, 2, 4, 1], [7, 3, 6, 2], [0, 1, 1, 0]]


@dataclass
class Target:
    url: str  # http://127.0.0.1:port
    host: str  # 127.0.0.1:port, as tritonclient takes it
    model_id: str
    http: httpx.Client

    def predict(self, rows: list[list[Any]]) -> dict[str, Any]:
        response = self.http.post(f"/v1/models/{self.model_id}/predict", json={"inputs": rows})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def target(module_database_url: str) -> Iterator[Target]:
    """Keyless loopback fitserve (as `make run` serves it) with one trained iris model."""
    app = create_app(Settings(database_url=module_database_url))
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        job = {"network": IRIS_NETWORK, "training": IRIS_TRAINING, "dataset": "iris"}
        submitted = http.post("/v1/jobs", json=job)
        assert submitted.status_code == 202, submitted.text
        model_id = train_queued_job(app.state.sessionmaker, submitted.json()["id"])
        yield Target(url, url.removeprefix("http://"), model_id, http)


@pytest.fixture
def client(target: Target) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(target.host) as c:
        yield c


def _input(rows: Any, dtype: Any, *, binary: bool = True) -> triton.InferInput:
    array = np.asarray(rows, dtype=dtype)
    tensor = triton.InferInput("input", list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _assert_equals_predict(result: Any, expected: dict[str, Any]) -> None:
    outputs = result.as_numpy("output")
    assert outputs.dtype == np.float32
    assert np.array_equal(outputs, np.asarray(expected["outputs"], dtype=np.float32))
    # BYTES: bytes when they came binary, str from JSON (the client's own conversion)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == [str(p) for p in expected["predictions"]]


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "fitserve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_and_ready_plain_and_versioned(
    client: triton.InferenceServerClient, target: Target
) -> None:
    for version in ("", "1"):
        metadata = client.get_model_metadata(target.model_id, model_version=version)
        assert metadata["name"] == target.model_id and metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in metadata["outputs"]] == ["output", "label"]
        assert client.is_model_ready(target.model_id, model_version=version)
    assert not client.is_model_ready(target.model_id, model_version="2")
    assert not client.is_model_ready("0" * 32)


def test_binary_infer_with_the_defaults_equals_predict(
    client: triton.InferenceServerClient, target: Target
) -> None:
    # set_data_from_numpy's default sends the tensor binary; no outputs asked for means the
    # client asks for every output in binary (binary_data_output)
    result = client.infer(target.model_id, [_input(ROWS, np.float32)], request_id="r-7")
    assert result.get_response()["id"] == "r-7"
    assert result.get_response()["model_version"] == "1"
    assert "data" not in result.get_output("output")  # it came binary
    _assert_equals_predict(result, target.predict(ROWS))


def test_json_infer_equals_predict(client: triton.InferenceServerClient, target: Target) -> None:
    outputs = [
        triton.InferRequestedOutput("output", binary_data=False),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    result = client.infer(
        target.model_id, [_input(ROWS, np.float32, binary=False)], outputs=outputs
    )
    assert "data" in result.get_output("output")
    _assert_equals_predict(result, target.predict(ROWS))
    # one output binary, the other JSON, in the order asked
    mixed = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("output", binary_data=True),
    ]
    result = client.infer(target.model_id, [_input(ROWS, np.float32)], outputs=mixed)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label", "output"]
    _assert_equals_predict(result, target.predict(ROWS))


def test_versioned_infer(client: triton.InferenceServerClient, target: Target) -> None:
    result = client.infer(target.model_id, [_input(ROWS, np.float32)], model_version="1")
    _assert_equals_predict(result, target.predict(ROWS))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(target.model_id, [_input(ROWS, np.float32)], model_version="2")
    assert raised.value.status() == "404"
    assert "no version '2'" in raised.value.message()


@pytest.mark.parametrize(
    "dtype",
    [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
     np.uint64, np.float16, np.float32, np.float64],
)  # fmt: skip
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_numeric_datatype_is_accepted(
    client: triton.InferenceServerClient, target: Target, dtype: Any, binary: bool
) -> None:
    rows = (np.asarray(WHOLE_ROWS) % 2).astype(bool) if dtype is np.bool_ else WHOLE_ROWS
    result = client.infer(target.model_id, [_input(rows, dtype, binary=binary)])
    _assert_equals_predict(result, target.predict(np.asarray(rows, dtype=float).tolist()))


def test_errors_are_readable_by_the_client(
    client: triton.InferenceServerClient, target: Target
) -> None:
    cases = [
        (lambda: client.infer(target.model_id, [_input([[1.0, 2.0, 3.0]], np.float32)]),
         "400", "does not fit the model's input [-1, 4]"),
        (lambda: client.infer("0" * 32, [_input(ROWS, np.float32)]), "404", "not found"),
        (lambda: client.get_model_metadata("no-such-model"), "404", "not found"),
        (lambda: client.infer(target.model_id, [_input(ROWS, np.float32)],
                              outputs=[triton.InferRequestedOutput("probs")]),
         "400", "no output 'probs'"),
    ]  # fmt: skip
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == status
        assert words in raised.value.message(), raised.value.message()


def _infer(target: Target, content: bytes, headers: dict[str, str]) -> httpx.Response:
    return target.http.post(f"/v2/models/{target.model_id}/infer", content=content, headers=headers)


def test_values_that_do_not_fit_their_datatype_are_refused(target: Target) -> None:
    def body(datatype: str, data: list[Any]) -> bytes:
        tensor = {"name": "input", "shape": [1, 4], "datatype": datatype, "data": data}
        return httpx.Request("POST", "/", json={"inputs": [tensor]}).read()

    cases = [
        (body("INT8", [300, 1, 2, 3]), "doesn't fit INT8"),
        (body("UINT16", [-1, 1, 2, 3]), "doesn't fit UINT16"),
        (body("INT32", [1.5, 1, 2, 3]), "whole numbers"),
        (body("BOOL", [1, 0, 1, 0]), "true/false"),
        (body("FP16", [70000.0, 1, 2, 3]), "beyond FP16's range"),
        (body("BYTES", ["a", "b", "c", "d"]), "features are numbers"),
        (body("FP8", [1, 2, 3, 4]), "not an OIP datatype"),
    ]
    for content, words in cases:
        response = _infer(target, content, {})  # no Content-Type: read as JSON
        assert response.status_code == 400, response.text
        assert list(response.json()) == ["error"] and words in response.json()["error"]


def test_binary_framing_errors(target: Target) -> None:
    header = (
        b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":16}}]}'
    )
    data = np.ones(4, dtype="<f4").tobytes()
    ok = _infer(target, header + data, {"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == target.predict([[1.0] * 4])["outputs"][0]
    short = header.replace(b":16}", b":12}")
    cases = [
        (header + data[:12], str(len(header)), "holds 12 bytes"),
        (short + data[:12], str(len(short)), "as FP32 needs 16"),
        (header + data + b"x", str(len(header)), "add up to 16"),
        (header + data, str(len(header) + 100), "at most the body's"),
        (header + data, "12a", "Inference-Header-Content-Length"),
    ]
    for content, length, words in cases:
        response = _infer(target, content, {"Inference-Header-Content-Length": length})
        assert response.status_code == 400, response.text
        assert words in response.json()["error"], response.json()


def test_v2_errors_from_every_layer_have_the_oip_shape(target: Target) -> None:
    base = f"/v2/models/{target.model_id}"
    responses = [
        (target.http.get("/v2/nothing"), 404),
        (target.http.delete(f"{base}/infer"), 405),
        (target.http.post(f"{base}/infer", content=b'{"inputs": [NaN]}'), 400),
        (target.http.post(f"{base}/infer", content=b"{not json"), 400),
        (target.http.post(f"{base}/infer", content=b""), 400),
    ]
    for response, status in responses:
        assert response.status_code == status, response.text
        assert list(response.json()) == ["error"] and response.json()["error"]
    assert "POST" in responses[1][0].headers["allow"]


def test_the_asyncio_client(target: Target) -> None:
    async def run() -> tuple[bool, Any]:
        async with triton_aio.InferenceServerClient(target.host) as client:
            live = await client.is_server_live()
            result = await client.infer(target.model_id, [_input(ROWS, np.float32)])
            return live, result

    live, result = asyncio.run(run())
    assert live
    _assert_equals_predict(result, target.predict(ROWS))
