"""POST /v1/networks/summary: Keras' counts, and specs that can't be built are 422s."""

from __future__ import annotations

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.api.conftest import assert_error

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url  # a summary touches no rows


IRIS = {
    "layers": [
        {"type": "dense", "units": 8, "activation": "relu", "input_dim": 4},
        {"type": "dense", "units": 8, "activation": "relu"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]
}


async def test_iris_summary_has_keras_counts(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/networks/summary", json=IRIS)
    assert response.status_code == 200, response.text
    body = response.json()
    # Keras: 4*8+8, 8*8+8, 8*3+3
    assert [layer["params"] for layer in body["layers"]] == [40, 72, 27]
    assert [layer["name"] for layer in body["layers"]] == ["dense", "dense_1", "dense_2"]
    assert body["layers"][-1]["output_shape"] == [None, 3]
    assert (body["total_params"], body["trainable_params"], body["non_trainable_params"]) == (
        139,
        139,
        0,
    )


async def test_batch_normalization_counts_non_trainable(client: httpx.AsyncClient) -> None:
    spec = {
        "layers": [
            {"type": "dense", "units": 16, "input_dim": 10},
            {"type": "batch_normalization"},
            {"type": "dropout", "rate": 0.5},
            {"type": "dense", "units": 1},
        ]
    }
    body = (await client.post("/v1/networks/summary", json=spec)).json()
    # 10*16+16 + 4*16 (2*16 of them moving statistics) + 0 + 16+1
    assert body["total_params"] == 176 + 64 + 17
    assert body["non_trainable_params"] == 32


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"layers": []}, ["body.layers"]),
        ({"layers": [{"type": "dense", "units": 3}]}, ["input_dim"]),
        (
            {"layers": [{"type": "dense", "units": "8", "input_dim": 4}]},
            ["body.layers[0]", "units"],
        ),
        (
            {"layers": [{"type": "dense", "units": 8, "input_dim": 4, "activation": "relu2"}]},
            ["activation"],
        ),
        ({"layers": [{"type": "conv2d", "units": 8, "input_dim": 4}]}, ["body.layers[0]"]),
        (
            {"layers": [{"type": "dense", "units": 8, "input_dim": 4}], "optimizer": "adam"},
            ["optimizer", "extra"],
        ),
        ({"layers": [{"type": "dropout", "rate": 1.5, "input_dim": 4}]}, ["rate"]),
    ],
)
async def test_bad_specs_are_422_naming_the_field(
    client: httpx.AsyncClient, spec: dict[str, object], words: list[str]
) -> None:
    assert_error(await client.post("/v1/networks/summary", json=spec), 422, *words)


async def test_the_parameter_limit_is_the_configured_one(sqlite_url: str) -> None:
    app = create_app(Settings(database_url=sqlite_url, max_params=100))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            response = await client.post("/v1/networks/summary", json=IRIS)
            assert_error(response, 422, "1.4e2 parameters", "limit is 1.0e2", "FITSERVE_MAX_PARAMS")
