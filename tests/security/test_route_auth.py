"""Generated from the route table: with keys required, every route but health, the docs and the
schema answers 401 without a valid key — so a new route can't ship open."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session
from starlette.routing import Mount

from app.auth import create_key, revoke_key
from app.config import Settings
from app.main import create_app

# Open on purpose: liveness for load balancers (and OIP's server health and metadata, as
# KServe and Triton serve them), and the API's own documentation.
OPEN_PATHS = {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
OPEN_PATHS |= {"/v2", "/v2/health/live", "/v2/health/ready"}
OPEN_MOUNTS = {"/docs/assets"}  # Swagger UI / ReDoc static files
AN_ID = "0" * 32  # well formed, names no row


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app answers, schema or not, included routers resolved."""
    try:
        from fastapi.routing import iter_route_contexts

        routes: list[Any] = list(iter_route_contexts(app.routes))
    except ImportError:  # FastAPI before lazily included routers: the routes are flat
        routes = list(app.routes)
    table = set()
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, Mount):
            assert route.path in OPEN_MOUNTS, f"unexpected mount {route.path}: is it protected?"
            continue
        for method in route.methods or ():
            if method != "HEAD":
                table.add((method, route.path))
    return sorted(table)


def schema_operations(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )


def protected(app: FastAPI) -> list[tuple[str, str]]:
    return [(m, p) for m, p in route_table(app) if p not in OPEN_PATHS]


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", AN_ID, path)


def test_the_route_table_covers_the_schema_and_more(api: Any) -> None:
    app = api.app
    table = route_table(app)
    assert set(schema_operations(app)) <= set(table)
    # The API's resources are all there, so an empty table can't pass the test below.
    paths = {p for _, p in table}
    for expected in ("/v1/datasets", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/networks/summary"):
        assert expected in paths
    assert len(protected(app)) >= 10


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer fs_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
    ids=["no-key", "unknown-key", "basic-auth", "empty-bearer", "huge-key"],
)
def test_every_route_needs_a_key(api: Any, headers: dict[str, str]) -> None:
    before = api.row_counts()
    open_routes = []
    for method, path in protected(api.app):
        r = api.http.request(method, fill(path), headers=headers, json={})
        if r.status_code != 401:
            open_routes.append(f"{method} {path} -> {r.status_code}")
            continue
        assert r.headers.get("www-authenticate") == "Bearer", (method, path)
        if path.startswith("/dashboard") and not headers:
            # A browser's navigation can't send a key: the page is the sign-in form, no data.
            assert r.headers["content-type"].startswith("text/html"), (method, path)
            assert 'id="sign-in"' in r.text and "fitserve keys create" in r.text, path
            continue
        body = r.json()
        if path.startswith("/v2/"):  # the Open Inference Protocol's error object
            assert list(body) == ["error"] and "key" in body["error"].lower(), (path, body)
        else:
            assert body["code"] == "unauthorized", (method, path, body)
            assert "key" in body["detail"].lower(), (method, path, body)
    assert open_routes == [], "routes answering without a valid key:\n" + "\n".join(open_routes)
    assert api.row_counts() == before


def test_a_revoked_key_is_refused_within_a_second(api: Any) -> None:
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    with Session(api.engine) as session, session.begin():
        _, secret = create_key(session, name=name)
    assert api.http.get("/v1/jobs", headers=api.auth(secret)).status_code == 200
    # revoked from another connection, as `fitserve keys revoke` does from another process,
    # while the server trusts its recent check of the key
    with Session(api.engine) as session, session.begin():
        revoke_key(session, name=name)
    revoked = time.monotonic()
    while (r := api.http.get("/v1/jobs", headers=api.auth(secret))).status_code == 200:
        assert time.monotonic() - revoked < 1.0, "a revoked key still worked after a second"
        time.sleep(0.02)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert time.monotonic() - revoked < 1.0


def test_open_routes_answer_without_a_key(api: Any) -> None:
    for path in ("/health", "/openapi.json", "/docs", "/redoc"):
        assert api.http.get(path).status_code == 200, path
    assert api.http.get("/docs/assets/swagger-ui-bundle.js").status_code == 200


def test_a_valid_key_opens_the_routes(api: Any) -> None:
    for path in ("/v1/datasets", "/v1/jobs"):
        r = api.http.get(path, headers=api.a)
        assert r.status_code == 200, r.text


def test_every_protected_operation_declares_401(api: Any) -> None:
    schema = api.app.openapi()
    missing = [
        f"{method} {path}"
        for method, path in schema_operations(api.app)
        if path not in OPEN_PATHS
        and "401" not in schema["paths"][path][method.lower()].get("responses", {})
    ]
    assert missing == []


def test_keyless_loopback_still_checks_a_key_that_is_sent(
    sqlite_url: str, live_server: Any
) -> None:
    app = create_app(Settings(database_url=sqlite_url))  # loopback default: keys optional
    with live_server(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/jobs").status_code == 200
        r = client.get("/v1/jobs", headers={"Authorization": "Bearer fs_unknown"})
        assert r.status_code == 401


def test_public_host_requires_keys_in_the_app(sqlite_url: str, live_server: Any) -> None:
    app = create_app(Settings(database_url=sqlite_url, host="0.0.0.0"))
    with live_server(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/v1/jobs").status_code == 401
