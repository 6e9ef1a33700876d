"""The fast predict path (app/fast_predict.py) against the route it stands in for: two apps on one
database, one with FITSERVE_FAST_PREDICT off, sent the same requests, must answer byte for byte
the same; and the fast path must really be the one answering once a model is cached."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.auth import create_key
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from tests.api.conftest import Rows
from tests.api.test_models import iris, store_model

pytestmark = pytest.mark.anyio

ROWS = iris().x.tolist()


async def _client(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


@pytest.fixture
async def fast(database_url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async for pair in _client(Settings(database_url=database_url, max_predict_rows=9000)):
        yield pair


@pytest.fixture
async def route(database_url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = Settings(database_url=database_url, max_predict_rows=9000, fast_predict=False)
    async for pair in _client(settings):
        yield pair


def fast_count(metrics: str) -> float:
    found = re.search(r"^fitserve_fast_predictions_total (\S+)$", metrics, re.MULTILINE)
    assert found is not None, metrics
    return float(found.group(1))


def requests(model_id: str, others_id: str, secret_a: str, secret_b: str) -> list[dict[str, Any]]:
    """(method args for client.post) covering every way a predict request can go."""
    url = f"/v1/models/{model_id}/predict"
    a = {"Authorization": f"Bearer {secret_a}"}
    b = {"Authorization": f"Bearer {secret_b}"}
    js = {"content-type": "application/json"}
    text = {"content-type": "text/plain"}
    vendor = {"content-type": "application/vnd.x+json; charset=utf-8"}
    return [
        {"url": url, "json": {"inputs": ROWS[:1]}},
        {"url": url, "json": {"inputs": ROWS}},
        {"url": url, "json": {"inputs": (ROWS * 56)[:8000]}},  # past the inline bound: a thread
        {"url": url, "json": {"inputs": [[5, 3, 1, 0]]}},  # integers are numbers too
        {"url": url, "json": {"inputs": [[1, 2, 3]]}},  # too narrow
        {"url": url, "json": {"inputs": [[1, 2, 3, 4]] * 9001}},  # too many rows
        {"url": url, "json": {"inputs": [[1, 2, 3, 1e39]]}},  # beyond float32
        {"url": url, "json": {"inputs": [[1e38, 1e38, 1e38, 1e38]]}},  # outputs not finite?
        {"url": url, "json": {"inputs": []}},
        {"url": url, "json": {"inputs": [[1, 2, 3, "4"]]}},
        {"url": url, "json": {"inputs": [[True, 2, 3, 4]]}},
        {"url": url, "json": {"inputs": [[1, 2, 3, 4]], "extra": 1}},
        {"url": url, "json": {"rows": [[1, 2, 3, 4]]}},
        {"url": url, "json": [[1, 2, 3, 4]]},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]]', "headers": js},  # cut short
        {"url": url, "content": b'{"inputs": [[1,2,3,4]], "inputs": [[1,2,3,4]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[NaN, 2, 3, 4]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]]}', "headers": vendor},
        {"url": url, "content": json.dumps({"inputs": ROWS[:2]}).encode()},  # no content type
        {"url": url, "content": json.dumps({"inputs": ROWS[:2]}), "headers": text},
        {"url": url, "json": {"inputs": ROWS[:2]}, "headers": a},  # a key that isn't the owner's
        {"url": url, "json": {"inputs": ROWS[:2]}, "headers": {"Authorization": "Bearer fs_nope"}},
        {"url": url, "json": {"inputs": ROWS[:2]}, "headers": {"Authorization": "Basic eDp5"}},
        {"url": f"/v1/models/{others_id}/predict", "json": {"inputs": ROWS[:2]}, "headers": b},
        {"url": f"/v1/models/{others_id}/predict", "json": {"inputs": ROWS[:2]}, "headers": a},
        {"url": f"/v1/models/{others_id}/predict", "json": {"inputs": ROWS[:2]}},
        {"url": f"/v1/models/{'0' * 32}/predict", "json": {"inputs": ROWS[:2]}},
        {"url": f"/v1/models/{model_id.upper()}/predict", "json": {"inputs": ROWS[:2]}},
    ]  # fmt: skip


async def test_every_answer_equals_the_routes(
    fast: tuple[Any, httpx.AsyncClient], route: tuple[Any, httpx.AsyncClient]
) -> None:
    app, fast_client = fast
    route_client = route[1]
    db = Rows(app.state.sessionmaker)
    with db.begin() as session:
        _, secret_a = create_key(session, name="a")
        key_b, secret_b = create_key(session, name="b")
        owner_b = key_b.id
    model_id, others_id = store_model(db), store_model(db, owner=owner_b)
    for client in (fast_client, route_client):  # both caches hold both models
        for mid, headers in ((model_id, {}), (others_id, {"Authorization": f"Bearer {secret_b}"})):
            warm = await client.post(
                f"/v1/models/{mid}/predict", json={"inputs": ROWS[:1]}, headers=headers
            )
            assert warm.status_code == 200, warm.text

    before = fast_count((await fast_client.get("/metrics")).text)
    statuses = []
    for request in requests(model_id, others_id, secret_a, secret_b):
        got, want = await fast_client.post(**request), await route_client.post(**request)
        why = (request["url"], got.text[:300], want.text[:300])
        assert (got.status_code, got.headers.multi_items()) == (
            want.status_code,
            want.headers.multi_items(),
        ), why
        assert got.content == want.content, why
        statuses.append(got.status_code)
    answered = fast_count((await fast_client.get("/metrics")).text) - before
    # The catalogue reaches every kind of answer, and the fast path gave exactly the 200s.
    assert set(statuses) >= {200, 401, 404, 413, 422}
    assert answered == statuses.count(200) >= 6


async def test_only_a_cached_model_takes_the_fast_path(fast: tuple[Any, httpx.AsyncClient]) -> None:
    app, client = fast
    model_id = store_model(Rows(app.state.sessionmaker))
    url, body = f"/v1/models/{model_id}/predict", {"inputs": ROWS[:3]}
    counts = [fast_count((await client.get("/metrics")).text)]
    for _ in range(3):
        response = await client.post(url, json=body)
        assert response.status_code == 200, response.text
        counts.append(fast_count((await client.get("/metrics")).text))
    # The first request loads the model through the route; the next two are the fast path's.
    assert [b - a for a, b in zip(counts, counts[1:], strict=False)] == [0, 1, 1]
    app.state.model_cache.discard(model_id)  # evicted: the route loads it again
    assert (await client.post(url, json=body)).status_code == 200
    assert fast_count((await client.get("/metrics")).text) == counts[-1]


async def test_a_key_check_that_cannot_reach_the_database_is_the_routes_503(
    fast: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = fast
    db = Rows(app.state.sessionmaker)
    with db.begin() as session:
        key, secret = create_key(session, name="k")
        owner = key.id
    keyed, keyless = store_model(db, owner=owner), store_model(db)
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"inputs": ROWS[:1]}
    for model_id, headers in ((keyed, auth), (keyless, {})):  # both cached
        response = await client.post(f"/v1/models/{model_id}/predict", json=body, headers=headers)
        assert response.status_code == 200, response.text
    # The database goes away (nothing listens on port 1). A sent key can't be checked, so the
    # fast path must not answer, and nothing may become a 500: the route's 503.
    app.state.engine = make_engine("postgresql://postgres@127.0.0.1:1/x")
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    response = await client.post(f"/v1/models/{keyed}/predict", json=body, headers=auth)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "unavailable" and response.headers["retry-after"] == "2"
    # A keyless request needs no database once its model is cached: still answered.
    response = await client.post(f"/v1/models/{keyless}/predict", json=body)
    assert response.status_code == 200, response.text
