"""GET /v1/jobs/{id}/metrics a page at a time (issue 18: 1,500 epochs of a 100-layer network came
back as one 2.6 MB body, growing to the 100,000-epoch cap): `limit` epochs after the epoch
`after`, `next_after` and a Link header while more follow, a 422 naming `limit` past the most.
The dashboard's compare view reads a curve thinned in SQL instead (`get_curve`)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from sqlalchemy import update

from app.services.jobs import CURVE_POINTS, MAX_METRICS_PAGE, METRICS_PAGE
from app.tables import Job, JobMetric
from tests.api.conftest import Rows, assert_error
from tests.api.test_jobs import submit

pytestmark = pytest.mark.anyio

EPOCHS = 1_203  # over two default pages


@pytest.fixture
async def long_job(client: httpx.AsyncClient, db: Rows) -> str:
    job = await submit(client)
    with db.begin() as session:
        for epoch in range(1, EPOCHS + 1):
            values = {"epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.5}
            session.add(JobMetric(job_id=job["id"], epoch=epoch, loss=1.0 / epoch, values=values))
        session.execute(
            update(Job).where(Job.id == job["id"]).values(status="running", epoch=EPOCHS)
        )
    return str(job["id"])


async def test_pages_follow_each_other_to_every_epoch(
    client: httpx.AsyncClient, long_job: str
) -> None:
    url = f"/v1/jobs/{long_job}/metrics"
    first = await client.get(url)
    body = first.json()
    assert [m["epoch"] for m in body["epochs"]] == list(range(1, METRICS_PAGE + 1))
    assert body["next_after"] == METRICS_PAGE
    assert first.headers["link"] == f'<{url}?after={METRICS_PAGE}&limit={METRICS_PAGE}>; rel="next"'

    seen, after, pages = [], 0, 0
    while after is not None:
        page = await client.get(url, params={"after": after, "limit": 400})
        assert page.status_code == 200, page.text
        seen += [m["epoch"] for m in page.json()["epochs"]]
        after, pages = page.json()["next_after"], pages + 1
        assert ("link" in page.headers) == (after is not None)
    assert seen == list(range(1, EPOCHS + 1)) and pages == 4  # 400 + 400 + 400 + 3

    # A page that ends exactly at the last epoch says so: no empty page to fetch after it.
    exact = (await client.get(url, params={"after": EPOCHS - 3, "limit": 3})).json()
    assert [m["epoch"] for m in exact["epochs"]] == [EPOCHS - 2, EPOCHS - 1, EPOCHS]
    assert exact["next_after"] is None
    assert (await client.get(url, params={"after": EPOCHS})).json() == {
        "epochs": [],
        "next_after": None,
    }


@pytest.mark.parametrize("limit", [0, MAX_METRICS_PAGE + 1, -5])
async def test_a_page_past_the_largest_is_refused_naming_limit(
    client: httpx.AsyncClient, long_job: str, limit: int
) -> None:
    response = await client.get(f"/v1/jobs/{long_job}/metrics", params={"limit": limit})
    body = assert_error(response, 422, "limit")
    assert body["errors"][0]["loc"] == ["query", "limit"]  # type: ignore[index]


async def test_the_dashboard_page_holds_the_first_page_and_says_where_the_next_starts(
    client: httpx.AsyncClient, long_job: str
) -> None:
    html = (await client.get(f"/dashboard/jobs/{long_job}")).text
    assert f'data-next="{METRICS_PAGE}"' in html
    assert f'data-metrics="/v1/jobs/{long_job}/metrics"' in html
    assert f'"epoch": {METRICS_PAGE}' in html or f'"epoch":{METRICS_PAGE}' in html
    assert f'"epoch":{METRICS_PAGE + 1}' not in html and f'"epoch": {METRICS_PAGE + 1}' not in html


async def test_the_compare_view_reads_a_thinned_curve_with_the_last_and_best_epochs(
    client: httpx.AsyncClient, db: Rows, long_job: str
) -> None:
    best = 602  # between the epochs the stride keeps
    with db.begin() as session:
        session.execute(
            update(JobMetric)
            .where(JobMetric.job_id == long_job, JobMetric.epoch == best)
            .values(loss=0.0)
        )
    html = (await client.get("/dashboard/compare", params={"job": long_job})).text
    island = re.search(r'id="compared-jobs">(.*?)</script>', html)
    assert island is not None, html[-2000:]
    rows = json.loads(island.group(1))[0]["rows"]
    stride = -(-EPOCHS // CURVE_POINTS)  # ceil: 3
    assert [r["epoch"] for r in rows] == sorted({*range(1, EPOCHS + 1, stride), best, EPOCHS})
    assert len(rows) <= CURVE_POINTS + 2
    assert rows[-1] == {"epoch": EPOCHS, "loss": 1.0 / EPOCHS, "accuracy": 0.5}
