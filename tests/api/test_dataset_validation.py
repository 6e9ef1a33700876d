"""Bad dataset uploads: each is a 422 (or 413/415) whose message says what to fix, and stores
nothing. Validation doesn't depend on the database, so these run on SQLite only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.db import upgrade_head
from app.main import create_app
from app.tables import Dataset
from tests.api.conftest import Rows, assert_error, iris_csv
from tests.api.test_datasets import upload_csv

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One migrated file for the module: these tests store nothing, so they can share an app.
    url = f"sqlite:///{tmp_path_factory.mktemp('validation')}/fitserve.db"
    upgrade_head(url)
    return url


@pytest.fixture(scope="module")
async def app(database_url: str) -> AsyncIterator[Any]:
    application = create_app(Settings(database_url=database_url))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def db(app: Any) -> Rows:
    return Rows(app.state.sessionmaker)


def count_datasets(db: Rows) -> int:
    return db.count(Dataset)


@pytest.mark.parametrize(
    ("data", "target", "words"),
    [
        (b"a,b,y\n1,2,x\n3,4\n", "y", ["row 2", "3 columns"]),
        (b"a,b,y\n1,2,x\n3,oops,z\n", "y", ["row 2", "'b'", "oops", "number"]),
        (b"a,b,y\n1,2,x\n3,nan,z\n", "y", ["row 2", "finite"]),
        (b"a,b,y\n1,2,x\n3,4,z\n", "label", ["'label'", "a, b, y"]),
        (b"a,b,y\n1,2,x\n3,4,x\n", "y", ["single class", "'x'"]),
        (b"a,b,y\n", "y", ["no data rows"]),
        (b"", "y", ["empty"]),
        (b"a,a,y\n1,2,x\n3,4,z\n", "y", ["repeats", "a"]),
        (b"y\nx\nz\n", "y", ["feature column"]),
        (b"a,y\n\xff\xfe,1\n", "y", ["utf-8"]),
    ],
)
async def test_bad_csv_is_a_422_that_says_what_to_fix(
    client: httpx.AsyncClient, db: Rows, data: bytes, target: str, words: list[str]
) -> None:
    before = count_datasets(db)
    assert_error(await upload_csv(client, data, target=target), 422, *words)
    assert count_datasets(db) == before


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            {"name": "r", "features": [[1, 2], [3]], "targets": ["a", "b"]},
            ["features[1]", "1 values"],
        ),
        ({"name": "m", "features": [[1], [2]], "targets": ["a"]}, ["2 rows", "1"]),
        ({"name": "e", "features": [[1]], "targets": ["a"], "colour": 1}, ["colour", "extra"]),
        (
            {"name": "s", "features": [[1], ["2"]], "targets": ["a", "b"]},
            ["features[1][0]", "number"],
        ),
        ({"name": "n", "features": [[1], [2]], "targets": ["a", None]}, ["targets[1]"]),
        ({"name": "x", "features": [[1], [2]], "targets": ["a", 1]}, ["mixes"]),
        (
            {"name": "f", "features": [[1], [2]], "targets": [0.5, 1], "task": "classification"},
            ["fraction"],
        ),
        ({"name": "", "features": [[1], [2]], "targets": [0, 1]}, ["body.name"]),
        ({"name": "a\x00b", "features": [[1], [2]], "targets": [0, 1]}, ["body.name", "control"]),
        (
            {"name": "k", "features": [[1], [2]], "targets": [0, 1], "feature_names": ["a", "b"]},
            ["feature_names", "2 names"],
        ),
        (
            {"name": "t", "features": [[1], [2]], "targets": [0, 1], "task": "clustering"},
            ["body.task"],
        ),
        ({"name": "w", "features": [[]], "targets": [0]}, ["features[0]", "empty"]),
        (
            {
                "name": "tn",
                "features": [[1], [2]],
                "targets": [1.5, 2.5],
                "target_names": ["a", "b"],
            },
            ["target_names", "2 names", "1 column"],
        ),
        ({"name": "big", "features": [[1], [2]], "targets": [2**60, 1]}, ["2**53", "strings"]),
    ],
)
async def test_bad_json_dataset_is_a_422_that_says_what_to_fix(
    client: httpx.AsyncClient, db: Rows, body: dict[str, object], words: list[str]
) -> None:
    before = count_datasets(db)
    assert_error(await client.post("/v1/datasets", json=body), 422, *words)
    assert count_datasets(db) == before


async def test_non_finite_numbers_in_raw_json_are_refused(
    client: httpx.AsyncClient, db: Rows
) -> None:
    before = count_datasets(db)
    for raw in (
        b'{"name":"n","features":[[NaN],[1]],"targets":[0,1]}',
        b'{"name":"n","features":[[1e999],[1]],"targets":[0,1]}',
    ):
        response = await client.post(
            "/v1/datasets", content=raw, headers={"content-type": "application/json"}
        )
        assert_error(response, 422, "finite")
    assert count_datasets(db) == before


async def test_other_media_types_are_a_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/datasets", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"}
    )
    assert_error(response, 415, "multipart/form-data")


async def test_form_without_file_or_target(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post(
            "/v1/datasets", files={"other": ("x", b"1")}, data={"target": "y", "name": "n"}
        ),
        422,
        "file",
    )
    assert_error(
        await client.post(
            "/v1/datasets", files={"file": ("d.csv", iris_csv())}, data={"name": "n"}
        ),
        422,
        "target",
    )
