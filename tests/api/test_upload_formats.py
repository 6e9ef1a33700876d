"""Dataset files of every accepted format — CSV, gzip'd CSV, Parquet, Arrow IPC — read block by
block with Arrow: the same arrays whatever the format, caps enforced as blocks arrive, and bad
files refused with a 4xx that names the row, column or block, storing nothing and leaving no
temporary file behind. Format handling doesn't depend on the database: SQLite only."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save as st_save

from app.config import Settings
from app.csv_ingest import BLOCK_BYTES
from app.dataset_codec import safetensors_file
from app.db import upgrade_head
from app.main import create_app
from app.tables import Dataset
from tests.api.conftest import Rows, assert_error, iris_csv

pytestmark = pytest.mark.anyio

PARQUET = "application/vnd.apache.parquet"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('formats')}/fitserve.db"
    upgrade_head(url)
    return url


@pytest.fixture(scope="module")
async def app(database_url: str) -> AsyncIterator[Any]:
    application = create_app(Settings(database_url=database_url, max_dataset_cells=2_000_000))
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


@pytest.fixture(scope="module", autouse=True)
def private_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary files (the spooled uploads) go to a directory of this module's own, so other
    processes' files in /tmp don't count as left behind."""
    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("spool"))
    yield
    tempfile.tempdir = before


def _temp_files() -> set[str]:
    """Files in the temporary directory, and temporary files this process still holds open
    (an unnamed spool file is only "left behind" that way)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()) and "(deleted)" in target:
            held.add(target)
    return set(os.listdir(tempfile.gettempdir())) | held


@pytest.fixture
def nothing_left(db: Rows) -> Iterator[None]:
    """The test's uploads store no dataset and leave no temporary file."""
    rows, files = db.count(Dataset), _temp_files()
    yield
    assert db.count(Dataset) == rows
    assert _temp_files() - files == set()


async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    *,
    filename: str = "data.csv",
    content_type: str | None = "text/csv",
    target: str = "species",
    **fields: str,
) -> httpx.Response:
    part = (filename, data, content_type) if content_type else (filename, data)
    return await client.post(
        "/v1/datasets", files={"file": part}, data={"target": target, "name": "up", **fields}
    )


def iris_table() -> pa.Table:
    import pyarrow.csv as pa_csv

    return pa_csv.read_csv(io.BytesIO(iris_csv()))


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def arrow_file_bytes(table: pa.Table, max_chunksize: int) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue()


def wide_csv(rows: int, *, ragged_at: int | None = None) -> bytes:
    """20 numeric features and a 3-class label; row `ragged_at` (1-based data row) loses a
    value."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 20)).round(5)
    lines = [",".join(f"f{i}" for i in range(20)) + ",species"]
    for i, row in enumerate(x):
        cells = [repr(float(v)) for v in row] + [("a", "b", "c")[i % 3]]
        if ragged_at is not None and i + 1 == ragged_at:
            cells = cells[1:]
        lines.append(",".join(cells))
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- the same data, any format


async def test_every_format_stores_the_same_arrays(client: httpx.AsyncClient) -> None:
    plain = await upload(client, iris_csv())
    assert plain.status_code == 201, plain.text
    table = iris_table()
    uploads = {
        "gzip": await upload(client, gzip.compress(iris_csv()), filename="iris.csv.gz",
                             content_type="application/gzip"),
        # three row groups of 50 rows: read group by group
        "parquet": await upload(client, parquet_bytes(table, row_group_size=50),
                                filename="iris.parquet", content_type=PARQUET),
        "arrow": await upload(client, arrow_file_bytes(table, 40), filename="iris.arrow",
                              content_type="application/vnd.apache.arrow.file"),
        "undeclared parquet": await upload(client, parquet_bytes(table), filename="blob",
                                           content_type="application/octet-stream"),
    }  # fmt: skip
    for kind, response in uploads.items():
        assert response.status_code == 201, (kind, response.text)
        body = response.json()
        assert body["sha256"] == plain.json()["sha256"], kind
        assert body["classes"] == ["setosa", "versicolor", "virginica"], kind


async def test_csv_labels_and_numbers_read_as_before(client: httpx.AsyncClient, db: Rows) -> None:
    """Spellings csv.reader and float() took: spaces around numbers and labels, integer labels
    sorted as numbers, quoted cells, a blank line, Windows line ends."""
    data = b'a,b,y\r\n 1.5,"2",10\r\n\r\n3,4e1 , 9\r\n5,+6,10\r\n'
    response = await upload(client, data, target="y", task="classification")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["rows"], body["classes"]) == (3, [9, 10])
    from app.dataset_codec import decode_arrays

    x, y = decode_arrays(db.get(Dataset, body["id"]))
    np.testing.assert_array_equal(x, np.array([[1.5, 2], [3, 40], [5, 6]], dtype=np.float32))
    assert y.tolist() == [1, 0, 1]


# ---------------------------------------------------------------- caps, as blocks arrive


async def test_cell_cap_refuses_at_the_first_block_past_it(database_url: str) -> None:
    settings = Settings(database_url=database_url, max_dataset_cells=30_000)
    application = create_app(settings)
    data = wide_csv(20_000)  # 420,000 cells; the cap passes in the first 1 MiB block
    assert len(data) > 3 * BLOCK_BYTES
    table = pa.csv.read_csv(io.BytesIO(data))  # type: ignore[attr-defined]
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            response = await upload(c, data)
            assert_error(response, 413, "more than 30,000 values", "data row 1,429 of 21")
            response = await upload(c, parquet_bytes(table), filename="w.parquet",
                                    content_type=PARQUET)  # fmt: skip
            assert_error(response, 413, "more than 30,000 values", "FITSERVE_MAX_DATASET_CELLS")


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (3, 2), (150, 4), (12_345, 19), (7, 0), (9,)])
def test_arrays_are_stored_as_safetensors_saves_them(
    shape: tuple[int, ...], dtype: type[np.generic]
) -> None:
    """encode_arrays makes the features' and targets' files itself, as a header and the array's
    own memory (no copy): the same bytes as safetensors, so equal data still hashes equally
    whichever way it came."""
    x = (np.random.default_rng(0).normal(size=shape) * 100).astype(dtype)
    assert bytes(safetensors_file("x", x)) == st_save({"x": x})
    assert bytes(safetensors_file("y", x.T)) == st_save({"y": np.ascontiguousarray(x.T)})


def test_upload_cap_is_sized_from_the_cell_cap() -> None:
    settings = Settings(max_dataset_cells=100_000_000)
    assert settings.upload_bytes_limit == 32 * 100_000_000
    assert Settings().upload_bytes_limit >= Settings().max_body_bytes
    assert Settings(max_upload_bytes=5).upload_bytes_limit == 5


# ---------------------------------------------------------------- bad files


async def test_truncated_parquet(client: httpx.AsyncClient, nothing_left: None) -> None:
    whole = parquet_bytes(iris_table())
    response = await upload(client, whole[: len(whole) * 2 // 3], filename="iris.parquet",
                            content_type=PARQUET)  # fmt: skip
    assert_error(response, 422, "not a readable Parquet file", "cut short")


WIDE_PARQUET = """
import io, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from app.parquet import parse_parquet
columns = {f"c{i}": np.random.default_rng(i).normal(size=20_000) for i in range(400)}
sink = io.BytesIO()
pq.write_table(pa.table({**columns, "y": np.arange(20_000) % 3}), sink)
before = pa.default_memory_pool().max_memory()
parsed = parse_parquet(io.BytesIO(sink.getvalue()), target="y", task=None, max_bytes=2**40)
assert parsed.x.shape == (20_000, 400), parsed.x.shape
print(pa.default_memory_pool().max_memory() - before)
"""


def test_wide_parquet_is_read_a_column_at_a_time() -> None:
    """400 columns x 20,000 rows (32 MB as float32): read across every column at once, Arrow's
    pool held each column's reader buffers together (234 MB); a column at a time, one reader's.
    In a fresh process, so the pool's high-water mark is this parse's."""
    out = subprocess.run([sys.executable, "-c", WIDE_PARQUET], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert int(out) < 16 * 2**20, f"{int(out) / 2**20:.0f} MB of Arrow's pool"


async def test_parquet_damaged_in_row_group_2_of_3(
    client: httpx.AsyncClient, nothing_left: None
) -> None:
    """A page header overwritten in the middle row group of one column: the 422 names the row
    group, its first row and the column, and nothing is stored."""
    whole = bytearray(parquet_bytes(iris_table(), row_group_size=50, use_dictionary=False))
    chunk = pq.ParquetFile(io.BytesIO(bytes(whole))).metadata.row_group(1).column(2)
    whole[chunk.data_page_offset : chunk.data_page_offset + 8] = b"\xff" * 8
    response = await upload(client, bytes(whole), filename="iris.parquet", content_type=PARQUET)
    assert_error(
        response, 422, "row group 2 of 3 (from row 50)", f"column {chunk.path_in_schema!r}",
        "could not be read as Parquet",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (pa.array([{"u": 1.0, "v": 2.0}] * 150), ["column 'nested'", "struct", "numbers"]),
        (pa.array([[1.5, 2.5]] * 150), ["column 'nested'", "lists of double", "integers"]),
        (pa.array(["1.5"] * 150), ["column 'nested'", "string", "features must be numbers"]),
    ],
    ids=["struct", "list-of-floats", "string"],
)
async def test_parquet_with_nested_or_string_features(
    client: httpx.AsyncClient, nothing_left: None, column: pa.Array, words: list[str]
) -> None:
    table = iris_table()
    table = table.add_column(0, "nested", column)
    if pa.types.is_list(column.type):
        table = table.select(["nested", "species"])
    response = await upload(client, parquet_bytes(table), filename="x.parquet",
                            content_type=PARQUET)  # fmt: skip
    assert_error(response, 422, *words)


async def test_csv_whose_rows_change_width_in_block_2_of_10(
    client: httpx.AsyncClient, nothing_left: None
) -> None:
    rows = 58_000  # ~ 10 MB: ten 1 MiB blocks
    per_block = rows // (len(wide_csv(rows)) // BLOCK_BYTES + 1)
    ragged = per_block + per_block // 2  # the middle of block 2
    data = wide_csv(rows, ragged_at=ragged)
    assert 9 * BLOCK_BYTES < len(data) < 11 * BLOCK_BYTES
    response = await upload(client, data)
    assert_error(response, 422, "block 2", "20 values", "21 columns")


async def test_gzipped_csv_without_its_header(
    client: httpx.AsyncClient, nothing_left: None
) -> None:
    body = iris_csv().split(b"\n", 1)[1]
    response = await upload(client, gzip.compress(body), filename="iris.csv.gz",
                            content_type="application/gzip")  # fmt: skip
    assert_error(response, 422, "no header row", body.split(b",")[0].decode())


async def test_truncated_gzip(client: httpx.AsyncClient, nothing_left: None) -> None:
    whole = gzip.compress(iris_csv())
    response = await upload(client, whole[:-20], filename="iris.csv.gz",
                            content_type="application/gzip")  # fmt: skip
    assert_error(response, 422, "gzip")


@pytest.mark.parametrize(
    ("make", "filename", "content_type", "words"),
    [
        (lambda: iris_csv(), "iris.parquet", PARQUET, ["declared as Parquet", "holds CSV text"]),
        (lambda: iris_csv(), "iris.parquet", None, ["declared as Parquet", "'iris.parquet'"]),
        (
            lambda: parquet_bytes(iris_table()),
            "iris.csv",
            "text/csv",
            ["declared as CSV", "holds Parquet"],
        ),
        (lambda: gzip.compress(iris_csv()), "iris.csv", "text/csv", ["declared as CSV", "gzip"]),
    ],
    ids=["csv-as-parquet", "csv-named-parquet", "parquet-as-csv", "gzip-as-csv"],
)
async def test_a_file_declared_as_one_format_holding_another(
    client: httpx.AsyncClient,
    nothing_left: None,
    make: Any,
    filename: str,
    content_type: str | None,
    words: list[str],
) -> None:
    response = await upload(client, make(), filename=filename, content_type=content_type)
    assert_error(response, 422, *words)


async def test_bad_cells_name_row_and_column(client: httpx.AsyncClient, nothing_left: None) -> None:
    lines = wide_csv(30_000).split(b"\n")
    cells = lines[25_001].split(b",")
    lines[25_001] = b",".join([cells[0], b"oops", *cells[2:]])
    response = await upload(client, b"\n".join(lines))
    assert_error(response, 422, "data row 25001", "'f1'", "'oops'")
