"""POST /v1/models/{id}/predict reads its own body (orjson straight into an array) for speed: its
answers must be those of FastAPI's own parsing of a PredictRequest parameter, cached model or not,
and whatever is added at router level must run for every prediction, cached models included."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response

import app.api.models as models_api
from app.api.deps import ModelCacheDep, OwnerDep
from app.auth import VERIFIED_KEY_SECONDS, create_key, revoke_key
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.errors import Unauthorized
from app.main import create_app
from app.schemas import PredictRequest
from app.services import predict
from tests.api.conftest import Rows
from tests.api.test_models import iris, store_model

pytestmark = pytest.mark.anyio

ROWS = iris().x.tolist()


async def _client(app: FastAPI) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield app, client


def reference_router() -> APIRouter:
    """The predict route as FastAPI parses a body parameter: the oracle for every answer."""
    router = APIRouter()

    @router.post("/reference/{model_id}/predict")
    def reference(
        model_id: str, body: PredictRequest, request: Request, owner: OwnerDep, cache: ModelCacheDep
    ) -> Response:
        state = request.app.state
        predict.check_rows(len(body.inputs), state.settings)
        with state.sessionmaker() as session:
            model = predict.get_model(session, cache=cache, owner=owner, model_id=model_id)
        outputs, labels = predict.predict(model, body.inputs)
        return Response(predict.encode_predictions(outputs, labels), media_type="application/json")

    return router


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(Settings(database_url=database_url, max_predict_rows=9000))
    app.include_router(reference_router())
    async for pair in _client(app):
        yield pair


def requests(model_id: str, others_id: str, secret_a: str, secret_b: str) -> list[dict[str, Any]]:
    """(method args for client.post) covering every way a predict request can go."""
    url = f"/v1/models/{model_id}/predict"
    a = {"Authorization": f"Bearer {secret_a}"}
    b = {"Authorization": f"Bearer {secret_b}"}
    js = {"content-type": "application/json"}
    text = {"content-type": "text/plain"}
    vendor = {"content-type": "application/vnd.x+json; charset=utf-8"}
    latin = {"content-type": "application/json; charset=latin-1"}
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
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 99999999999999999999999]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]], "x": "\\ud800"}', "headers": js},
        # app.limits leaves this route's body to orjson and to check_body: the same 422s
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 1e999]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, -Infinity]]}'},  # no content type
        {"url": url, "content": b'{"inputs": [["\\ud800", 2, 3, 4]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]], "NaN": NaN}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 1' + b"0" * 308 + b']]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 9' + b"9" * 307 + b']]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[' + b"9" * 308 + b",2,3,1e0300]]}", "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]], "x": "\xed\xa0\x80"}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]]}\r\n', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]], "a": 1}', "headers": js},
        {"url": url, "content": (json.dumps({"inputs": (ROWS * 56)[:8000]})[:-2]
                                 + ", [1, 2, 3, Infinity]]}").encode(), "headers": js},
        {"url": url, "content": (json.dumps({"inputs": [[1, 2, 3, 4]] * 9001})[:-2]
                                 + ", [NaN, 2, 3, 4]]}").encode(), "headers": js},
        {"url": url, "content": b'\xef\xbb\xbf{"inputs": [[1, 2, 3, 4]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, null]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2], [3, 4, 5, 6]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[[1, 2, 3, 4]]]}', "headers": js},
        {"url": url, "content": b'{"inputs": [1, 2, 3, 4]}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]]}', "headers": latin},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4]], "label": "false"}', "headers": js},
        {"url": url, "content": b'{"inputs": [[1, 2, 3, 4], [1, 2, 3, 4e38]]}', "headers": js},
        {"url": url, "content": b'', "headers": js},
        {"url": url, "content": b'\xff\xfe', "headers": js},
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


async def test_every_answer_is_fastapis_own_parsing_cached_or_not(
    served: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = served
    db = Rows(app.state.sessionmaker)
    with db.begin() as session:
        _, secret_a = create_key(session, name="a")
        key_b, secret_b = create_key(session, name="b")
        owner_b = key_b.id
    model_id, others_id = store_model(db), store_model(db, owner=owner_b)
    cache = app.state.model_cache
    statuses = []
    for request in requests(model_id, others_id, secret_a, secret_b):
        answers = []
        for cached in (False, True):
            if not cached:
                cache.discard(model_id)
                cache.discard(others_id)
            misses = cache.misses
            got = await client.post(**request)
            reference = {**request, "url": request["url"].replace("/v1/models/", "/reference/")}
            if not cached:  # the route's miss loaded the model: the reference hits it
                assert cache.misses - misses <= 1
            want = await client.post(**reference)
            why = (request, cached, got.text, want.text)
            assert got.status_code == want.status_code, why
            assert got.headers.multi_items() == want.headers.multi_items(), why
            assert got.content == want.content, why
            answers.append(got.content)
        assert answers[0] == answers[1]  # the same answer from a cache miss and a hit
        statuses.append(got.status_code)
    # The catalogue reaches every kind of answer.
    assert set(statuses) >= {200, 401, 404, 413, 422}
    assert statuses.count(200) >= 6


async def test_a_cached_prediction_makes_no_query_and_a_miss_one(
    served: tuple[Any, httpx.AsyncClient],
) -> None:
    from sqlalchemy import event

    app, client = served
    model_id = store_model(Rows(app.state.sessionmaker))
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE is not a query
            statements.append(statement)

    event.listen(app.state.engine, "before_cursor_execute", record)
    url, body = f"/v1/models/{model_id}/predict", {"inputs": ROWS[:3]}
    assert (await client.post(url, json=body)).status_code == 200
    assert len(statements) == 1 and "weights" in statements[0]  # the row, weights and columns
    for _ in range(3):
        assert (await client.post(url, json=body)).status_code == 200
    assert len(statements) == 1


async def test_a_router_level_dependency_runs_for_cached_predictions(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def audit(request: Request) -> None:
        calls.append(request.url.path)
        if request.headers.get("x-deny"):
            raise Unauthorized("denied by the audit dependency")

    audited = APIRouter(dependencies=[Depends(audit)])
    audited.include_router(models_api.router)
    monkeypatch.setattr(models_api, "router", audited)
    async for app, client in _client(create_app(Settings(database_url=database_url))):
        model_id = store_model(Rows(app.state.sessionmaker))
        url, body = f"/v1/models/{model_id}/predict", {"inputs": ROWS[:2]}
        for _ in range(3):  # a miss, then hits
            assert (await client.post(url, json=body)).status_code == 200
        assert model_id in app.state.model_cache and app.state.model_cache.hits >= 2
        assert calls == [url] * 3
        denied = await client.post(url, json=body, headers={"x-deny": "1"})
        assert denied.status_code == 401 and "audit" in denied.json()["detail"]
        assert len(calls) == 4


def keyed_model(app: Any) -> tuple[str, str]:
    """(model id, secret) of a model owned by a new key named "k"."""
    db = Rows(app.state.sessionmaker)
    with db.begin() as session:
        key, secret = create_key(session, name="k")
        owner = key.id
    return store_model(db, owner=owner), secret


async def test_a_key_check_that_cannot_reach_the_database_is_a_503(
    served: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = served
    keyed, secret = keyed_model(app)
    keyless = store_model(Rows(app.state.sessionmaker))
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"inputs": ROWS[:1]}
    for model_id, headers in ((keyed, auth), (keyless, {})):  # both cached
        response = await client.post(f"/v1/models/{model_id}/predict", json=body, headers=headers)
        assert response.status_code == 200, response.text
    # The database goes away (nothing listens on port 1). Once the key's last check is older than
    # VERIFIED_KEY_SECONDS it can't be checked again: a 503, never a 500.
    await asyncio.sleep(VERIFIED_KEY_SECONDS)
    app.state.engine = make_engine("postgresql://postgres@127.0.0.1:1/x")
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    response = await client.post(f"/v1/models/{keyed}/predict", json=body, headers=auth)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "unavailable" and response.headers["retry-after"] == "2"
    # A keyless request needs no database once its model is cached: still answered.
    response = await client.post(f"/v1/models/{keyless}/predict", json=body)
    assert response.status_code == 200, response.text


async def test_a_keyed_prediction_checks_its_key_at_most_twice_a_second_and_revocation_holds(
    served: tuple[Any, httpx.AsyncClient],
) -> None:
    from sqlalchemy import event

    app, client = served
    model_id, secret = keyed_model(app)
    db = Rows(app.state.sessionmaker)
    url, body = f"/v1/models/{model_id}/predict", {"inputs": ROWS[:1]}
    auth = {"Authorization": f"Bearer {secret}"}
    assert (await client.post(url, json=body, headers=auth)).status_code == 200  # model cached
    lookups: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            lookups.append(statement)

    event.listen(app.state.engine, "before_cursor_execute", record)
    started = time.monotonic()
    answered = 0
    while time.monotonic() - started < 1.2:
        assert (await client.post(url, json=body, headers=auth)).status_code == 200
        answered += 1
    assert answered > 10 and 1 <= len(lookups) <= 3  # one lookup per VERIFIED_KEY_SECONDS
    with db.begin() as session:  # revoked elsewhere, while the key's check is fresh
        revoke_key(session, name="k")
    revoked = time.monotonic()
    while (response := await client.post(url, json=body, headers=auth)).status_code == 200:
        assert time.monotonic() - revoked < 1.0, "a revoked key still predicted after a second"
        await asyncio.sleep(0.02)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert time.monotonic() - revoked < 1.0


async def test_called_directly_or_through_fastapi_the_answers_are_the_same(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DirectRoute calls the endpoint itself while nothing applies to it, and hands the request
    to FastAPI's handling once anything does (here a no-op router-level dependency): every kind
    of answer, cached model or not, is the same byte for byte either way."""
    handled_by_fastapi: list[bool] = []

    async def noop(request: Request) -> None:
        handled_by_fastapi.append(True)

    settings = Settings(database_url=database_url, max_predict_rows=9000)
    answers: dict[bool, list[tuple[int, list[tuple[str, str]], bytes]]] = {}
    for through_fastapi in (False, True):
        router = models_api.router
        if through_fastapi:
            router = APIRouter(dependencies=[Depends(noop)])
            router.include_router(models_api.router)
        with monkeypatch.context() as patch:
            patch.setattr(models_api, "router", router)
            async for app, client in _client(create_app(settings)):
                db = Rows(app.state.sessionmaker)
                with db.begin() as session:
                    _, secret_a = create_key(session, name=f"a{through_fastapi}")
                    key_b, secret_b = create_key(session, name=f"b{through_fastapi}")
                    owner_b = key_b.id
                model_id, others_id = store_model(db), store_model(db, owner=owner_b)
                got = []
                for request in requests(model_id, others_id, secret_a, secret_b):
                    for _ in range(2):  # a miss, then a hit
                        response = await client.post(**request)
                        body = response.content  # the ids differ between the two apps
                        for name, value in (("MODEL", model_id), ("OTHERS", others_id)):
                            body = body.replace(value.encode(), name.encode())
                            body = body.replace(value.upper().encode(), name.encode())
                        got.append((response.status_code, response.headers.multi_items(), body))
                    app.state.model_cache.discard(model_id)
                answers[through_fastapi] = got
        assert bool(handled_by_fastapi) == through_fastapi
    assert answers[False] == answers[True]


def test_a_direct_route_takes_only_path_parameters_and_the_request() -> None:
    from app.api.direct_route import DirectRoute

    async def with_query(model_id: str, request: Request, limit: int = 1) -> Response:
        return Response()

    async def with_dependency(model_id: str, request: Request, owner: OwnerDep) -> Response:
        return Response()

    async def with_int_path(model_id: int, request: Request) -> Response:
        return Response()

    router = APIRouter(prefix="/x")
    for endpoint in (with_query, with_int_path):
        with pytest.raises(TypeError, match="DirectRoute"):
            router.add_api_route(
                "/{model_id}", endpoint, methods=["POST"], route_class_override=DirectRoute
            )
    # A dependency is allowed: FastAPI then handles every request to the route itself.
    router.add_api_route(
        "/{model_id}", with_dependency, methods=["POST"], route_class_override=DirectRoute
    )


async def test_a_running_app_keeps_its_startup_objects_out_of_full_collections(
    settings: Settings,
) -> None:
    """What exists once the app has started lives as long as the process: frozen (gc.freeze),
    so the cyclic GC's full collections, which a 10,000-row prediction's 10,000 lists set off
    every few requests, no longer walk it. Undone when the app stops."""
    import gc

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000  # the modules, torch, the app
        cycle: list[Any] = []
        cycle.append(cycle)  # made after startup: collected as usual
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
