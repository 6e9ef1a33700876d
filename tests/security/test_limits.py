"""Request limits: 413 before parsing (declared and streamed bodies), 422 for non-finite numbers.

Run against a small FastAPI app with the service's error handlers, in-process and through a real
uvicorn (chunked transfer encoding is the server's business, so it is tested through one).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from app.errors import install_error_handlers
from app.limits import RequestLimitsMiddleware, body_problem
from tests.security.asgi_kit import http_scope

LIMIT = 8000


class Body(BaseModel):
    values: list[list[float]]
    name: str = ""


def make_app(calls: list[str]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=LIMIT)

    @app.post("/json")
    def post_json(body: Body) -> dict[str, Any]:
        calls.append("json")
        return {"rows": len(body.values)}

    @app.post("/raw")
    async def post_raw(request: Request) -> dict[str, Any]:
        body = await request.body()
        calls.append("raw")
        return {"bytes": len(body)}

    return app


@pytest.fixture
def calls() -> list[str]:
    return []


class InProcess:
    """A synchronous face on httpx's ASGI transport, which streams a generator body chunk by
    chunk (Starlette's TestClient would join it into one message)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        content = kwargs.get("content")
        if isinstance(content, Iterator):
            kwargs["content"] = _aiter(content)
        return asyncio.run(self._post(path, **kwargs))

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.post(path, **kwargs)


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class OneMessage(InProcess):
    """The body in one ASGI message, as uvicorn hands on a small request that arrived whole
    (httpx's ASGI transport sends a final empty message after it)."""

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        request = httpx.Request("POST", f"http://127.0.0.1{path}", **kwargs)
        body = await request.aread()
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(name.lower(), value) for name, value in request.headers.raw]
        await self.app(http_scope(path, headers), receive, send)
        start, content = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
        return httpx.Response(start["status"], headers=start["headers"], content=content)


@pytest.fixture(params=["chunked", "one message"])
def client(calls: list[str], request: pytest.FixtureRequest) -> InProcess:
    return (InProcess if request.param == "chunked" else OneMessage)(make_app(calls))


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def test_a_body_within_the_limit_passes(client: InProcess, calls: list[str]) -> None:
    r = client.post("/json", json={"values": [[1.0, 2.5e10, -3e-300]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"rows": 1}
    r = client.post("/raw", content=b"x" * LIMIT, headers={"content-type": "text/csv"})
    assert r.status_code == 200 and r.json() == {"bytes": LIMIT}
    assert calls == ["json", "raw"]


def test_declared_length_over_the_limit_is_413_before_the_app(
    client: InProcess, calls: list[str]
) -> None:
    for path, headers in (("/json", {}), ("/raw", {"content-type": "text/csv"})):
        r = client.post(path, content=b"[" * (LIMIT + 1), headers=headers)
        assert r.status_code == 413
        body = r.json()
        assert body["code"] == "too_large"
        assert f"{LIMIT:,} bytes" in body["detail"] and "FITSERVE_MAX_BODY_BYTES" in body["detail"]
    assert calls == []


@pytest.mark.parametrize("path", ["/json", "/raw"])
def test_a_streamed_body_is_cut_off_at_the_limit(
    client: InProcess, calls: list[str], path: str
) -> None:
    headers = {"content-type": "application/json" if path == "/json" else "text/csv"}
    r = client.post(path, content=_chunks(LIMIT + 50), headers=headers)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_large"
    assert calls == []


def test_a_streamed_body_under_the_limit_passes(client: InProcess, calls: list[str]) -> None:
    r = client.post("/raw", content=_chunks(LIMIT), headers={"content-type": "text/csv"})
    assert r.status_code == 200 and r.json() == {"bytes": LIMIT}


def test_chunked_bodies_through_real_http(live_server: Any) -> None:
    calls: list[str] = []
    with live_server(make_app(calls)) as url, httpx.Client(base_url=url, timeout=10) as http:
        for path in ("/raw", "/json"):
            r = http.post(path, content=_chunks(10 * LIMIT), headers={"content-type": "text/csv"})
            assert r.status_code == 413, r.text
            assert r.json()["code"] == "too_large"
        r = http.post("/raw", content=_chunks(LIMIT // 2), headers={"content-type": "text/csv"})
        assert r.status_code == 200 and r.json() == {"bytes": LIMIT // 2}
        r = http.post("/json", content=b"x" * (LIMIT + 1))
        assert r.status_code == 413
    assert calls == ["raw"]


NON_FINITE = [
    ('{"values": [[1.0, NaN]]}', "values[0][1]", "NaN"),
    ('{"values": [[Infinity]]}', "values[0][0]", "Infinity"),
    ('{"values": [[1], [-Infinity]]}', "values[1][0]", "-Infinity"),
    ('{"values": [[1e999]]}', "values[0][0]", "1e999"),
    ('{"values": [[-1.5E+400, 2]]}', "values[0][0]", "-1.5E+400"),
    ('{"values": [[' + "9" * 400 + "]]}", "values[0][0]", "999"),
    ('{"values": [[' + "1" * 5000 + "]]}", "values[0][0]", "111"),
    ('{"values": [[1.' + "0" * 400 + "]]}", None, None),  # many digits, but a finite 1.0
]


@pytest.mark.parametrize("text, where, shown", NON_FINITE)
def test_non_finite_numbers_are_422_naming_the_place(
    client: InProcess, calls: list[str], text: str, where: str | None, shown: str | None
) -> None:
    r = client.post("/json", content=text, headers={"content-type": "application/json"})
    if where is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "validation_error"
    assert body["detail"].startswith(f"{where} is {shown}")
    assert "finite" in body["detail"]
    assert body["errors"][0]["loc"][0] == "body"
    assert calls == []


def test_a_body_without_content_type_is_checked_too(client: InProcess) -> None:
    # FastAPI parses a body without Content-Type as JSON, so the check must not skip it.
    r = client.post("/json", content=b'{"values": [[NaN]]}')
    assert r.status_code == 422 and "NaN" in r.json()["detail"]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-8-sig"])
def test_a_body_in_another_unicode_encoding_is_checked_as_text(
    client: InProcess, encoding: str
) -> None:
    # Each character of UTF-16/32 text is ASCII bytes and NULs: read as bytes, "NaN" is not
    # there. FastAPI decodes such a body as json.loads does, so the check must too.
    headers = {"content-type": "application/json"}
    r = client.post("/json", content='{"values": [[NaN]]}'.encode(encoding), headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("values[0][0] is NaN: numbers must be finite")
    r = client.post("/json", content='{"values": [[1.5]]}'.encode(encoding), headers=headers)
    assert r.status_code == 200, r.text


def test_the_words_inside_strings_are_fine(client: InProcess) -> None:
    body = {"values": [[1.0]], "name": "NaN Infinity 1e999 " + "7" * 400}
    r = client.post("/json", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_multipart_and_csv_bodies_are_not_json_checked(client: InProcess) -> None:
    r = client.post("/raw", content=b"a,b\nNaN,1e999\n", headers={"content-type": "text/csv"})
    assert r.status_code == 200  # CSV values are checked where the CSV is parsed


def test_invalid_json_is_left_to_fastapi(client: InProcess) -> None:
    r = client.post(
        "/json", content=b'{"values": [[NaN', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "validation_error"  # FastAPI's json_invalid, with its position


def test_bad_content_length_is_400() -> None:
    calls: list[str] = []
    app = make_app(calls)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/raw",
        "headers": [(b"content-length", b"12abc")],
        "app": app,
    }
    middleware = RequestLimitsMiddleware(app, max_body_bytes=LIMIT)
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 400
    assert b"Content-Length" in sent[1]["body"]
    assert calls == []


def test_body_problem_is_cheap_for_ordinary_bodies() -> None:
    assert body_problem(json.dumps({"x": [[0.5] * 100] * 100}).encode()) is None
    assert body_problem(b'{"x": "tree123e456"}') is None


@pytest.mark.parametrize(
    "text, where",
    [
        (b'{"values": [[1]], "name": "a\\ud800b"}', "name holds a lone surrogate"),
        (b'{"values": [[1]], "name": "\\udfff"}', "name holds a lone surrogate"),
        (b'{"values": [[1]], "\\ud800": 1}', "is a field name with a lone surrogate"),
    ],
)
def test_lone_surrogates_are_422_naming_the_place(
    client: InProcess, calls: list[str], text: bytes, where: str
) -> None:
    r = client.post("/json", content=text, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert where in r.json()["detail"]
    assert calls == []


def test_a_surrogate_pair_is_fine(client: InProcess) -> None:
    body = b'{"values": [[1]], "name": "smile \\ud83d\\ude00"}'
    r = client.post("/json", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_a_large_declared_body_gets_the_413_not_a_reset(live_server: Any) -> None:
    # The server answers without parsing; the client, still writing, must still read the answer.
    calls: list[str] = []
    big = b"x" * (50 * LIMIT)
    with live_server(make_app(calls)) as url, httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(3):
            r = http.post("/raw", content=big, headers={"content-type": "text/csv"})
            assert r.status_code == 413 and r.json()["code"] == "too_large"
    assert calls == []


def test_expect_100_continue_is_answered_before_the_body_is_sent(live_server: Any) -> None:
    with live_server(make_app([])) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /raw HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\n"
                b"Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
            )
            answer = b""
            while b"}" not in answer:  # the JSON error body has arrived
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"FITSERVE_MAX_BODY_BYTES" in answer


def test_a_json_body_that_is_not_utf8_is_422(client: InProcess, calls: list[str]) -> None:
    # FastAPI alone answers a bare 400 "There was an error parsing the body".
    r = client.post("/json", content=b'{"values": [[1]], "name": "\xff\xfe"}')
    assert r.status_code == 422
    assert "not UTF-8 text: byte 27" in r.json()["detail"]
    r = client.post("/json", content=b'{"values": [[1]], "name": "\xed\xa0\x80"}')
    assert r.status_code == 422  # a surrogate as raw bytes, which Python's json lets through
    assert "name holds a lone surrogate" in r.json()["detail"]
    assert calls == []
