"""Who may send a request, decided before its body is read (app/access.py), through real HTTP.

- Keyless loopback mode answers only loopback Host names (a DNS-rebinding page sends its own
  name) and refuses browser requests from other sites (Origin, Sec-Fetch-Site); a cross-site
  multipart POST created a dataset before.
- With keys required, a request without a valid key is refused before one byte of its body is
  read: the 401 comes back while the client hasn't sent the body at all.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.access import is_loopback_host
from app.config import Settings
from app.db import make_engine
from app.main import create_app
from app.tables import Dataset
from tests.security.conftest import IRIS_CSV, Api

LiveServer = Callable[[Any], AbstractContextManager[str]]


@pytest.fixture(scope="module")
def keyless(module_database_url: str, live_server: LiveServer) -> Iterator[tuple[str, Any]]:
    settings = Settings(database_url=module_database_url)
    assert not settings.api_keys_required
    engine = make_engine(module_database_url)
    try:
        with live_server(create_app(settings)) as url:
            yield url, engine
    finally:
        engine.dispose()


def _datasets(engine: Any) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


def _upload(url: str, **headers: str) -> httpx.Response:
    files = {"file": ("iris.csv", IRIS_CSV, "text/csv")}
    return httpx.post(
        f"{url}/v1/datasets",
        files=files,
        data={"target": "species", "name": "from-a-page"},
        headers=headers,
        timeout=30,
    )


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "attacker.example:8000", "127.0.0.1.nip.io", "localhost.evil", "0.0.0.0"],
)
def test_keyless_refuses_a_rebound_host(keyless: tuple[str, Any], host: str) -> None:
    url, engine = keyless
    before = _datasets(engine)
    read = httpx.get(f"{url}/v1/datasets", headers={"Host": host})
    assert read.status_code == 421, read.text
    assert "Host" in read.json()["detail"] and read.json()["code"] == "misdirected_request"
    write = _upload(url, Host=host)
    assert write.status_code == 421, write.text
    assert _datasets(engine) == before


def test_keyless_answers_loopback_names(keyless: tuple[str, Any]) -> None:
    url, _ = keyless
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        r = httpx.get(f"{url}/v1/datasets", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed iframe or a file:// page
        {"Origin": "http://127.0.0.1.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=lambda h: ":".join(next(iter(h.items()))),
)
def test_keyless_refuses_cross_site_browser_requests(
    keyless: tuple[str, Any], headers: dict[str, str]
) -> None:
    url, engine = keyless
    before = _datasets(engine)
    r = _upload(url, **headers)
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "cross_site"
    assert _datasets(engine) == before


def test_keyless_accepts_its_own_pages_and_plain_clients(keyless: tuple[str, Any]) -> None:
    url, engine = keyless
    before = _datasets(engine)
    same_origin = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
    assert _upload(url, **same_origin).status_code == 201
    assert _upload(url).status_code == 201  # curl, the Python client: no Origin at all
    assert _upload(url, **{"Sec-Fetch-Site": "none"}).status_code == 201  # typed in by the user
    assert _datasets(engine) == before + 3


def test_keyed_mode_is_unchanged_by_host_and_origin(api: Api) -> None:
    r = api.http.get(
        "/v1/datasets", headers={**api.a, "Host": "api.example", "Origin": "http://evil.example"}
    )
    assert r.status_code == 200, r.text


def _raw_request(url: str, head: str, timeout: float = 5.0) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("authorization", [None, "Bearer fs_not-a-key"])
def test_the_key_is_checked_before_the_body_is_read(api: Api, authorization: str | None) -> None:
    """Headers only, announcing 1.9 MB that never comes: the 401 arrives anyway (before, the
    server waited for the body, scanned it, and only then looked at the key)."""
    url = str(api.http.base_url).rstrip("/")
    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1900000\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + "\r\n"
    )
    answer = _raw_request(url, head)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")


def test_loopback_host_names() -> None:
    assert is_loopback_host("127.0.0.1:8000")
    assert is_loopback_host("LOCALHOST")
    assert is_loopback_host("[::1]")
    assert is_loopback_host("app.localhost:1")
    assert not is_loopback_host("[::1]x")
    assert not is_loopback_host("localhost:80a")
    assert not is_loopback_host("127.0.0.2")  # loopback too, but not a name we bind
    assert not is_loopback_host("localhost:²")
