"""Schemathesis against the OpenAPI schema, through a live uvicorn on 127.0.0.1 with keys
required and no worker (fuzzed jobs stay queued): no 5xx, and every response conforms to the
schema — its status declared, its body and headers as documented.

Bounded: a fixed number of examples per operation and mode, derandomized so every run sends the
same cases. (Schemathesis' own pytest plugin does not run under pytest 9, so its strategies are
driven with Hypothesis directly, one test per operation and generation mode.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import Session

from app.auth import create_key
from app.config import Settings
from app.db import make_engine
from app.main import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 30
# A stream that ends only when its job does: with no worker, it would never end.
STREAMING = {("GET", "/v1/jobs/{job_id}/events")}


def _schema_document() -> dict[str, Any]:
    # The schema is built without a database; the live server below serves the same one.
    app = create_app(Settings(database_url="sqlite://", require_api_keys=True))
    return app.openapi()


SCHEMA = schemathesis.openapi.from_dict(_schema_document())
OPERATIONS = [
    op
    for op in (result.ok() for result in SCHEMA.get_all_operations())
    if (op.method.upper(), op.path) not in STREAMING
]


@pytest.fixture(scope="module")
def fuzz_target(module_database_url: str, live_server: Any, iris_trainer: Any) -> Iterator[Any]:
    """The live API, a key, and real rows of that key: in positive mode the fuzzed requests
    name them, so the handlers behind the 404s (predict, exports, cancel...) are fuzzed too.
    Once on a SQLite file and once on Postgres (module_database_url, migrated)."""
    url = module_database_url
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        _, secret = create_key(session, name="fuzzer")
    auth = {"Authorization": f"Bearer {secret}"}
    app = create_app(Settings(database_url=url, require_api_keys=True))
    try:
        with live_server(app) as base_url, httpx.Client(base_url=base_url) as http:
            rows = iris_trainer(http, engine, auth)
            ids = {"dataset_id": rows["dataset"], "job_id": rows["job"], "model_id": rows["model"]}
            yield base_url, auth, ids
    finally:
        engine.dispose()


def test_the_served_schema_is_the_one_fuzzed(fuzz_target: Any) -> None:
    base_url, _, _ = fuzz_target
    assert httpx.get(f"{base_url}/openapi.json").json() == _schema_document()
    assert len(OPERATIONS) >= 10


def _negatable(operation: Any) -> bool:
    """Operations with something to get wrong: a body or query parameters. (A string path
    parameter has no invalid value, so Hypothesis would find nothing negative to send.)"""
    raw = operation.definition.raw
    params = [p for p in raw.get("parameters", []) if p.get("in") == "query"]
    return "requestBody" in raw or bool(params)


CASES = [
    pytest.param(op, GenerationMode.POSITIVE, id=f"{op.label} positive") for op in OPERATIONS
] + [
    pytest.param(op, GenerationMode.NEGATIVE, id=f"{op.label} negative")
    for op in OPERATIONS
    if _negatable(op)
]


@pytest.mark.parametrize("operation, mode", CASES)
def test_the_api_conforms_to_its_schema(
    fuzz_target: Any, operation: Any, mode: GenerationMode
) -> None:
    base_url, auth, ids = fuzz_target
    names = {p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"}
    # Positive cases name real rows; negative ones keep generated (and so unknown) ids.
    fixed = {k: v for k, v in ids.items() if k in names} if mode.is_positive else {}

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
    def conforms(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=auth, checks=CHECKS)

    conforms()
