"""/docs documents every field with an example, and the examples run as they are."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import Rows
from tests.api.test_models import store_model

pytestmark = pytest.mark.anyio

FAMILIES = [
    "DatasetRead", "DatasetList", "JobCreate", "JobRead", "JobList", "MetricsRead", "EpochMetrics",
    "ModelRead", "ModelList", "PredictRequest", "PredictResponse", "Health", "ErrorResponse",
    "NetworkSummary", "LayerSummaryRead",
]  # fmt: skip
LIST_WRAPPERS = {"DatasetList", "JobList", "ModelList"}  # items: examples live on the item model


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def dataset_create_schema(spec: dict[str, Any]) -> dict[str, Any]:
    body = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    return body["application/json"]["schema"]


def has_example(prop: dict[str, Any], spec: dict[str, Any]) -> bool:
    """An example on the field, or (for a field that is another model) on that model."""
    if prop.get("examples") is not None:
        return True
    refs = [prop.get("$ref")] + [p.get("$ref") for p in prop.get("anyOf", [])]
    components = spec["components"]["schemas"]
    return any(r and components[r.rsplit("/", 1)[1]].get("examples") for r in refs)


async def test_every_field_has_a_description_and_an_example(client: httpx.AsyncClient) -> None:
    spec = await openapi(client)
    schemas = {name: spec["components"]["schemas"][name] for name in FAMILIES}
    schemas["DatasetCreate"] = dataset_create_schema(spec)
    for name, schema in schemas.items():
        for field, prop in schema["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
            if name not in LIST_WRAPPERS:
                assert has_example(prop, spec), f"{name}.{field} has no example"


async def test_the_examples_run_as_they_are(client: httpx.AsyncClient, db: Rows) -> None:
    spec = await openapi(client)
    schemas = spec["components"]["schemas"]

    dataset = dataset_create_schema(spec)["examples"][0]
    response = await client.post("/v1/datasets", json=dataset)
    assert response.status_code == 201, response.text

    network = schemas["NetworkSpec"]["examples"][0]
    summary = await client.post("/v1/networks/summary", json=network)
    assert summary.status_code == 200, summary.text
    assert (
        summary.json()["total_params"]
        == schemas["NetworkSummary"]["properties"]["total_params"]["examples"][0]
    )

    job = schemas["JobCreate"]["examples"][0]
    response = await client.post("/v1/jobs", json=job)
    assert response.status_code == 202, response.text
    assert response.json()["epochs"] == job["training"]["epochs"]

    model_id = store_model(db)  # the iris model, trained in-process as the worker would
    request = schemas["PredictRequest"]["examples"][0]
    response = await client.post(f"/v1/models/{model_id}/predict", json=request)
    assert response.status_code == 200, response.text
    expected = schemas["PredictResponse"]["properties"]["predictions"]["examples"][0]
    assert response.json()["predictions"] == expected
