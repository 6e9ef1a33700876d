"""The dashboard's model-name pages through the ASGI app, on SQLite and Postgres: a key's names
with their versions (model and job links), aliases and the version the plain name serves; a
model's page with the names it is registered as; user text escaped; another key's names 404.
(tests/ux/test_registry_dashboard.py clicks the buttons in Chromium.)"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.api.test_registry import _keys, _train

pytestmark = pytest.mark.anyio
HOSTILE = "<script>alert('job')</script>"


async def test_names_pages_show_versions_aliases_and_escape_user_text(
    app: Any, client: httpx.AsyncClient
) -> None:
    a, b = _keys(app)
    first = await _train(app, client, a, register_as="iris", name=HOSTILE)
    second = await _train(app, client, a, register_as="iris")
    other = await _train(app, client, b, register_as="wine.v2")
    await client.put("/v1/registered-models/iris/aliases/production", json={"version": 1},
                     headers=a)  # fmt: skip
    await client.put("/v1/registered-models/iris/aliases/staging", json={"version": 2},
                     headers=a)  # fmt: skip

    for url in ("/dashboard/names", "/dashboard/names/iris"):
        page = await client.get(url, headers=a)
        assert page.status_code == 200, page.text
        html = page.text
        assert 'data-name="iris"' in html and "wine.v2" not in html and other not in html
        rows = re.findall(r'<tr data-version="(\d)"( class="served")?>', html)
        assert rows == [("2", ""), ("1", ' class="served"')]  # newest first; production served
        for model in (first, second):
            assert f'href="/dashboard/models/{model}"' in html
        assert 'data-alias="production">production</span>' in html
        assert 'data-alias="staging">staging</span>' in html
        # the job's name is user text: escaped, never markup
        assert HOSTILE not in html and "&lt;script&gt;alert(&#x27;job&#x27;)" in html
        assert 'data-api="/v1/registered-models/"' in html and "fitserveAuth.headers" in html

    # the model page names what the model is registered as, and offers to register it
    page = (await client.get(f"/dashboard/models/{first}", headers=a)).text
    registered = re.search(r'<p id="registered-as">(.*?)</p>', page, re.S)
    assert registered is not None
    assert 'href="/dashboard/names/iris"' in registered[1] and "version 1" in registered[1]
    assert "production" in registered[1] and "staging" not in registered[1]
    assert f'data-action="register" data-model="{first}"' in page

    # another key: none of a's names, and a's name is a 404 as on the API
    listing = (await client.get("/dashboard/names", headers=b)).text
    assert "wine.v2" in listing and "iris" not in listing and first not in listing
    assert (await client.get("/dashboard/names/iris", headers=b)).status_code == 404
    assert (await client.get(f"/dashboard/models/{first}", headers=b)).status_code == 404
    unknown = await client.get("/dashboard/names/%3Cb%3Enope", headers=a)
    assert unknown.status_code == 404 and "'<b>nope' not found" in unknown.json()["detail"]


async def test_no_names_yet(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard/names")
    assert page.status_code == 200 and "No model names yet" in page.text
    assert '<a href="/dashboard/names">model names</a>' in page.text
