"""/health answers in under 100 ms at p99 (over what the machine's load costs it idle) while the
largest JSON bodies the server takes are in flight, through real HTTP on uvicorn with the
default limits (issue 18's first acceptance item):

- a 60 MB JSON dataset (the server parses it in a helper process: app/intake.py; parsed in a
  thread of the API, pydantic and numpy held the GIL and /health waited seconds);
- a 30 MB POST /v1/networks/import-keras (an activation string that long) and an ordinary 63 MB
  JSON body to POST /v1/jobs: JSON bodies of routes that take specs rather than data are held to
  FITSERVE_MAX_JSON_BODY_BYTES (1 MB), refused with 413 while they stream instead of being
  parsed on the event loop by FastAPI (1-2.5 s each before).

test_event_loop.py covers the other heavy kinds at 256 KB with the test limits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from tests.security.conftest import Api
from tests.security.test_event_loop import _p99
from tests.security.uvicorn_kit import health_while, uvicorn_process

BUDGET = 0.100  # seconds, p99
MB = 1_000_000


@pytest.fixture(scope="module")
def default_server(api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API with the default limits (64 MiB bodies) in its own uvicorn process."""
    log = tmp_path_factory.mktemp("big-bodies") / "uvicorn.log"
    with uvicorn_process(api.settings.database_url, log, {}) as url:
        yield url


def _dataset(size: int) -> bytes:
    """A JSON dataset of about `size` bytes: rows of 8 floats, 6 decimals, a numeric target each."""
    rng = np.random.default_rng(0)
    sample = np.round(rng.normal(size=(1000, 8)), 6)
    per_row = (
        len(json.dumps({"features": sample.tolist(), "targets": sample[:, 0].tolist()})) / 1000
    )
    rows = np.round(rng.normal(size=(int(size / per_row), 8)), 6)
    body = {"name": "big", "features": rows.tolist(), "targets": rows[:, 0].tolist()}
    return json.dumps(body).encode()


def _keras_activation(size: int) -> bytes:
    layer = {"class_name": "Dense", "config": {"units": 3, "activation": "a" * size}}
    config = {"class_name": "Sequential", "config": {"layers": [layer]}}
    return json.dumps({"config": config}).encode()


def _ordinary(size: int) -> bytes:
    """A job body padded to `size` bytes with a list of numbers."""
    values = ",".join(["0.5"] * (size // 4))
    return ('{"dataset": "iris", "name": "padded", "pad": [' + values + "]}").encode()


def _idle(url: str, seconds: float = 3.0) -> list[float]:
    """/health latencies with nothing else in flight: what this machine's load costs alone."""
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            assert http.get("/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.005)
    return latencies


def test_health_stays_fast_while_the_largest_json_bodies_are_in_flight(
    api: Api, default_server: str
) -> None:
    """What the bodies add to /health's p99 stays under the 100 ms budget. On an idle machine
    /health alone is a few ms; on this shared 2-CPU VM with others' suites running (load 9-13)
    it is 30-60 ms at p99 by itself, so the budget is counted on top of the idle p99 measured
    here first (bench/big_bodies.py has the figures, and the old code's seconds)."""
    idle = _p99(_idle(default_server))
    json_type = {**api.a, "Content-Type": "application/json"}
    dataset = _dataset(60 * MB)
    keras = _keras_activation(30 * MB)
    ordinary = _ordinary(63 * MB)
    assert 55 * MB < len(dataset) < 64 * MB and len(ordinary) > 62 * MB
    kinds: dict[str, tuple[Callable[[httpx.Client], httpx.Response], int, int]] = {
        "60 MB JSON dataset": (
            lambda h: h.post("/v1/datasets", content=dataset, headers=json_type),
            201,
            1,
        ),
        "30 MB import-keras": (
            lambda h: h.post("/v1/networks/import-keras", content=keras, headers=json_type),
            413,
            3,
        ),
        "63 MB job body": (
            lambda h: h.post("/v1/jobs", content=ordinary, headers=json_type),
            413,
            3,
        ),
    }
    pooled: list[float] = []
    figures = {}
    for name, (send, status, rounds) in kinds.items():
        latencies, responses = health_while(default_server, send, rounds, timeout=300)
        assert [r.status_code for r in responses] == [status] * (rounds + 1), [
            r.text[:300] for r in responses
        ]
        pooled += latencies
        figures[name] = (
            f"p99 {_p99(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
            f"over {len(latencies)} probes"
        )
    figures["idle"] = f"p99 {idle * 1000:.0f} ms"
    assert _p99(pooled) < idle + BUDGET, figures
    print(figures)  # noqa: T201 - the figures, for -s runs and the commit message


def test_a_big_dataset_parsed_in_the_helper_is_the_one_parsed_here(
    api: Api, default_server: str
) -> None:
    """The helper stores what the in-process parse stores: same rows, columns and bytes; and its
    errors are the ones a parse here gives (a 422 naming the place, with its location)."""
    rng = np.random.default_rng(1)
    rows = np.round(
        rng.normal(size=(60_000, 4)), 4
    ).tolist()  # ~2.5 MB: over intake_in_process_bytes
    labels = [["cat", "dog", "eel"][i % 3] for i in range(60_000)]
    body = {"name": "helper", "features": rows, "targets": labels}
    big = httpx.post(f"{default_server}/v1/datasets", json=body, headers=api.a, timeout=120)
    small = httpx.post(
        f"{default_server}/v1/datasets",
        json={**body, "features": rows[:100], "targets": labels[:100]},
        headers=api.a,
        timeout=60,
    )
    assert big.status_code == small.status_code == 201, (big.text, small.text)
    shown = big.json()
    assert (shown["rows"], shown["n_features"], shown["classes"]) == (
        60_000,
        4,
        ["cat", "dog", "eel"],
    )
    assert shown["task"] == "classification" == small.json()["task"]

    broken = {**body, "features": [*rows[:-1], [1.0, 2.0, "x", 4.0]]}
    refused = httpx.post(f"{default_server}/v1/datasets", json=broken, headers=api.a, timeout=120)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["loc"] == ["body", "features", 59_999, 2]
    ragged = {**body, "features": [*rows[:-1], [1.0]]}
    refused = httpx.post(f"{default_server}/v1/datasets", json=ragged, headers=api.a, timeout=120)
    assert refused.status_code == 422 and "features[59999] has 1 values" in refused.json()["detail"]
