"""No request stalls the server: while the heaviest request of each kind is in flight, /health
answers in under 100 ms at p99, through real HTTP on uvicorn.

Each kind is what stalled the event loop before: a JSON body of 308-digit runs (the body scan's
regex retried every run at every position: ~0.64 s per MB, before even the key was checked), a
big valid JSON dataset, a CSV over the cell limit (parsed whole before the limit was checked;
with csv.reader in a thread /health still waited 0.7-1 s behind it, the parse holding the GIL),
CSV and Parquet uploads at the cell limit (read with Arrow, which parses with the GIL released),
and batch prediction at the row limit. Bodies are 256 KB, so the test runs in seconds on two
cores; the old body scan alone stalled /health for ~0.15-0.5 s at this size. (A single C-level parse
step still holds the GIL for time linear in its input, ~25 ms per MB for json.loads, on the
thread that runs it: that is what bounds bodies at FITSERVE_MAX_BODY_BYTES.)
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from tests.security.conftest import TEST_LIMITS, Api
from tests.security.uvicorn_kit import health_while, uvicorn_process

BUDGET = 0.100  # seconds, p99
# Per request. Big enough that the old body scan stalled the loop for ~0.3 s; small enough that
# one C-level parse step (json.loads, pydantic), which holds the GIL on whatever thread runs it,
# stays far under the budget on a busy 2-core machine.
BODY_BYTES = 256 * 1024
# Requests of each kind sent back to back while /health is probed.
ROUNDS = 3


def _digit_runs(limit: int) -> bytes:
    run = "9" * 308
    count = (limit - 100) // (len(run) + 1)
    return ('{"features": [' + ",".join([run] * count) + "]}").encode()


def _json_dataset(limit: int) -> bytes:
    rng = np.random.default_rng(0)
    rows = []
    size = 0
    while size < limit - 200_000:
        row = [round(float(v), 6) for v in rng.normal(size=8)]
        rows.append(row)
        size += len(json.dumps(row)) + 1
    body = {"name": "big", "features": rows, "targets": [float(r[0]) for r in rows]}
    return json.dumps(body).encode()


def _csv_over_cells(limit: int) -> bytes:
    line = b"1,2,3,4,5,6,7,8,9,0\n"
    return b"a,b,c,d,e,f,g,h,i,target\n" + line * ((limit - 100) // len(line))


def _table_at_cells(cells: int) -> pa.Table:
    """Random floats (as a CSV writes them in full) and a 3-class label, just under the cell cap."""
    rng = np.random.default_rng(1)
    rows = cells // 21
    x = rng.normal(size=(rows, 20))
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, rows)]
    return pa.table({**{f"f{i}": x[:, i] for i in range(20)}, "target": labels})


def _csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink)
    return sink.getvalue()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=500)
    return sink.getvalue()


@pytest.fixture(scope="module")
def server(api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("event-loop") / "uvicorn.log"
    with uvicorn_process(api.settings.database_url, log, TEST_LIMITS) as url:
        yield url


# The row limit at its default (FITSERVE_MAX_PREDICT_ROWS 10,000); the body cap at 4 MB, a
# sixteenth of its default: app.limits holds a JSON body whole, scanning each chunk and joining
# them on the event loop (~5-10 ms per MB together on this VM, whatever the route), which a body
# of many MB stretches past the budget by itself.
PREDICT_LIMITS = {"max_predict_rows": 10_000, "max_body_bytes": 4 * 1024 * 1024}


@pytest.fixture(scope="module")
def predict_server(api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("event-loop-predict") / "uvicorn.log"
    with uvicorn_process(api.settings.database_url, log, {**TEST_LIMITS, **PREDICT_LIMITS}) as url:
        yield url


def _while_in_flight(
    url: str, send: Callable[[httpx.Client], httpx.Response], rounds: int = ROUNDS
) -> list[float]:
    """/health latencies while `send`'s request runs `rounds` times (uvicorn_kit.health_while)."""
    latencies, responses = health_while(url, send, rounds, timeout=60)
    responses = responses[1:]  # the measured rounds
    assert all(r.status_code < 500 for r in responses), [r.text[:300] for r in responses]
    return latencies


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


@pytest.fixture
def kinds(api: Api, trained: dict[str, str]) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    limit = BODY_BYTES
    assert limit < api.settings.max_body_bytes
    digits = _digit_runs(limit)
    dataset = _json_dataset(limit)
    csv_cells = _csv_over_cells(limit)
    at_cells = _table_at_cells(api.settings.max_dataset_cells)
    csv_at_cells, parquet_at_cells = _csv_bytes(at_cells), _parquet_bytes(at_cells)
    parquet_over_cells = _parquet_bytes(pa.concat_tables([at_cells] * 2))
    rows = api.settings.max_predict_rows
    # Encoded here, once: json= would encode 10,000 rows on the sender thread each round, holding
    # this process' GIL while it times the /health probes.
    predict = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]] * rows}).encode()
    batch = b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n" + (
        b"5.1,3.5,1.4,0.2\n" * rows
    )
    json_type = {"Content-Type": "application/json"}
    model = trained["model"]
    return {
        "digit runs, no key": lambda h: h.post("/v1/datasets", content=digits, headers=json_type),
        "digit runs, keyed": lambda h: h.post(
            "/v1/datasets", content=digits, headers={**api.a, **json_type}
        ),
        "JSON dataset": lambda h: h.post(
            "/v1/datasets", content=dataset, headers={**api.a, **json_type}
        ),
        "CSV over the cell limit": lambda h: h.post(
            "/v1/datasets",
            files={"file": ("big.csv", csv_cells, "text/csv")},
            data={"target": "target", "name": "big"},
            headers=api.a,
        ),
        "CSV at the cell limit": lambda h: h.post(
            "/v1/datasets",
            files={"file": ("full.csv", csv_at_cells, "text/csv")},
            data={"target": "target", "name": "full"},
            headers=api.a,
        ),
        "Parquet at the cell limit": lambda h: h.post(
            "/v1/datasets",
            files={"file": ("full.parquet", parquet_at_cells, "application/vnd.apache.parquet")},
            data={"target": "target", "name": "full"},
            headers=api.a,
        ),
        "Parquet over the cell limit": lambda h: h.post(
            "/v1/datasets",
            files={"file": ("big.parquet", parquet_over_cells, "application/vnd.apache.parquet")},
            data={"target": "target", "name": "big"},
            headers=api.a,
        ),
        "predict at the row limit": lambda h: h.post(
            f"/v1/models/{model}/predict", content=predict, headers={**api.a, **json_type}
        ),
        "predict.csv at the row limit": lambda h: h.post(
            f"/v1/models/{model}/predict.csv",
            content=batch,
            headers={**api.a, "Content-Type": "text/csv"},
        ),
    }


def test_health_stays_fast_while_heavy_requests_are_in_flight(
    server: str, kinds: dict[str, Callable[[httpx.Client], httpx.Response]]
) -> None:
    pooled: list[float] = []
    figures = {}
    for name, send in kinds.items():
        latencies = _while_in_flight(server, send)
        pooled += latencies
        figures[name] = f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} probes"
    p99 = _p99(pooled)
    assert p99 < BUDGET, f"/health p99 {p99 * 1000:.0f} ms; per kind: {figures}"


def test_dataset_uploads_alone_keep_health_fast(
    server: str, kinds: dict[str, Callable[[httpx.Client], httpx.Response]]
) -> None:
    """The CSV and Parquet uploads by themselves, 12 rounds each (a p99 over enough probes that
    one scheduling hiccup of this shared machine isn't the whole figure): in the pooled figure
    above, the probes taken during the other kinds could hide a stall behind an upload."""
    uploads = [name for name in kinds if "CSV" in name or "Parquet" in name]
    latencies = [t for name in uploads for t in _while_in_flight(server, kinds[name], rounds=12)]
    assert _p99(latencies) < BUDGET, (
        f"p99 {_p99(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )


def test_health_stays_fast_while_maximal_predictions_are_in_flight(
    predict_server: str, api: Api, trained: dict[str, str]
) -> None:
    """The largest predictions a server takes, JSON and CSV, at FITSERVE_MAX_PREDICT_ROWS, and
    bodies at the byte cap holding far more rows than that (refused with 413: the JSON's rows
    counted before it is parsed, the CSV's as its blocks arrive). Parsing, the forward pass and
    the answer's encoding run in threads; /health still answers within the budget."""
    rows = PREDICT_LIMITS["max_predict_rows"]
    cap = PREDICT_LIMITS["max_body_bytes"] - 1024
    row = [5.1, 3.5, 1.4, 0.2]
    at_limit = json.dumps({"inputs": [row] * rows}).encode()
    line = json.dumps(row).replace(" ", "")
    at_cap = ('{"inputs": [' + ",".join([line] * (cap // (len(line) + 1))) + "]}").encode()
    header = b"sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"
    csv_at_limit = header + b"5.1,3.5,1.4,0.2\n" * rows
    csv_at_cap = header + b"5.1,3.5,1.4,0.2\n" * (cap // 16)
    url = f"/v1/models/{trained['model']}/predict"
    json_type = {**api.a, "Content-Type": "application/json"}
    csv_type = {**api.a, "Content-Type": "text/csv"}
    kinds: dict[str, tuple[int, Callable[[httpx.Client], httpx.Response]]] = {
        "JSON at the row limit": (200, lambda h: h.post(url, content=at_limit, headers=json_type)),
        "JSON at the byte cap": (413, lambda h: h.post(url, content=at_cap, headers=json_type)),
        "CSV at the row limit": (
            200,
            lambda h: h.post(f"{url}.csv", content=csv_at_limit, headers=csv_type),
        ),
        "CSV at the byte cap": (
            413,
            lambda h: h.post(f"{url}.csv", content=csv_at_cap, headers=csv_type),
        ),
    }
    pooled: list[float] = []
    figures = {}
    for name, (status, send) in kinds.items():
        with httpx.Client(base_url=predict_server, timeout=60) as http:
            answer = send(http)
        assert answer.status_code == status, (name, answer.text[:300])
        latencies = _while_in_flight(predict_server, send)
        pooled += latencies
        figures[name] = f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} probes"
    p99 = _p99(pooled)
    assert p99 < BUDGET, f"/health p99 {p99 * 1000:.0f} ms; per kind: {figures}"
