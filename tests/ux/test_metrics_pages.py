"""A job with more epochs than a page of GET /v1/jobs/{id}/metrics: the Python client and the
dashboard's job page follow the pages, so both still show every epoch; the compare view draws
a bounded curve of it, its last and best epochs kept (live uvicorn)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from fitserve_client import FitserveClient
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.db import make_engine
from app.services.jobs import CURVE_POINTS, METRICS_PAGE
from app.tables import Job, JobMetric
from tests.ux.conftest import IRIS_NETWORK, IRIS_TRAINING, LiveServer, run_chromium

EPOCHS = 2_345  # three of the client's pages, five of the server's default


def _long_job(
    server: LiveServer,
    name: str = "long",
    epochs: int = EPOCHS,
    loss: Callable[[int], float] = lambda e: 1.0 / e,
    values: Callable[[int], dict[str, object]] = lambda e: {},
) -> str:
    """A cancelled 100,000-epoch job given `epochs` recorded epochs, as a worker writes them.

    live_api has no worker of its own, but live_server's (session-scoped, on the same database)
    may already be running and claim the job the moment it is queued: the job is cancelled and
    seen ended before its epochs are written, so no worker writes beside them and no later
    test's job waits behind it."""
    with FitserveClient(server.url) as client:
        job = client.submit(IRIS_NETWORK, "iris", IRIS_TRAINING, name=name, epochs=100_000)
        client.cancel(job.id)
        deadline = time.monotonic() + 60
        while client.get_job(job.id).status != "cancelled":
            assert time.monotonic() < deadline, "the job was not cancelled within 60 s"
            time.sleep(0.1)
    engine = make_engine(server.database_url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(delete(JobMetric).where(JobMetric.job_id == job.id))
            session.add_all(
                JobMetric(
                    job_id=job.id,
                    epoch=e,
                    loss=loss(e),
                    values={
                        "epoch": e,
                        "loss": loss(e),
                        "accuracy": min(1.0, e / epochs),
                        **values(e),
                    },
                )
                for e in range(1, epochs + 1)
            )
            session.execute(update(Job).where(Job.id == job.id).values(epoch=epochs))
    finally:
        engine.dispose()
    return job.id


def test_the_client_and_the_dashboard_follow_every_page(
    live_api: LiveServer, chromium: str, tmp_path: Path
) -> None:
    job_id = _long_job(live_api)
    first = httpx.get(f"{live_api.url}/v1/jobs/{job_id}/metrics", timeout=10).json()
    assert len(first["epochs"]) == METRICS_PAGE < EPOCHS and first["next_after"] == METRICS_PAGE

    with FitserveClient(live_api.url) as client:
        history = client.metrics(job_id)
        assert [m.epoch for m in history] == list(range(1, EPOCHS + 1))
        assert [m.epoch for m in client.metrics(job_id, after=2_000)] == list(
            range(2_001, EPOCHS + 1)
        )

    url = f"{live_api.url}/dashboard/jobs/{job_id}"
    dom = run_chromium(chromium, url, tmp_path, "--virtual-time-budget=8000", "--dump-dom").stdout
    progress = re.search(r'<span id="progress">([^<]*)</span>', dom)
    assert progress is not None and progress.group(1) == f"{EPOCHS} / 100000", dom[-3000:]
    loss = re.search(r'<polyline points="([^"]+)"[^>]*data-series="loss"', dom)
    assert loss is not None and len(loss.group(1).split()) == EPOCHS


def test_the_compare_view_draws_a_bounded_curve_that_ends_at_the_last_epoch(
    live_api: LiveServer, chromium: str, tmp_path: Path
) -> None:
    """12,345 epochs of a network with gradient norms for 100 layers (the rows a 100-layer job
    writes: ~1.7 kB each), the lowest loss at an epoch between the sampled ones: the compare view
    holds at most CURVE_POINTS + 2 epochs of each job, without the gradient norms, and they
    include the last epoch and the best."""
    epochs, best = 12_345, 7_777
    norms = {f"dense_{i}": 0.001 * i for i in range(100)}
    long_id = _long_job(
        live_api,
        epochs=epochs,
        loss=lambda e: 0.0 if e == best else 1.0 / e,
        values=lambda e: {"val_loss": 2.0 / e, "grad_norm": 1.0, "layer_grad_norms": norms},
    )
    short_id = _long_job(live_api, "short", epochs=30)

    url = f"{live_api.url}/dashboard/compare?job={long_id}&job={short_id}"
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200, page.text[:300]
    island = re.search(
        r'<script type="application/json" id="compared-jobs">(.*?)</script>', page.text
    )
    assert island is not None
    long, short = json.loads(island.group(1))
    shown = [row["epoch"] for row in long["rows"]]
    stride = -(-epochs // CURVE_POINTS)  # ceil
    assert shown == sorted({*range(1, epochs + 1, stride), best, epochs})
    assert len(shown) <= CURVE_POINTS + 2 < epochs
    assert long["rows"][-1] == {
        "epoch": epochs,
        "loss": 1.0 / epochs,
        "accuracy": 1.0,
        "val_loss": 2.0 / epochs,
    }
    assert all("layer_grad_norms" not in row for row in long["rows"])
    assert [row["epoch"] for row in short["rows"]] == list(range(1, 31))  # short: every epoch
    # The page, both curves in it, stays far under one page of the metrics API.
    assert len(page.content) < 200_000, len(page.content)

    dom = run_chromium(chromium, url, tmp_path, "--virtual-time-budget=5000", "--dump-dom").stdout
    compared = re.search(r'<table id="compared">(.*?)</table>', dom, re.S)
    assert compared is not None and f"{epochs} / 100000" in compared.group(1), dom[-3000:]
    curves = re.findall(r'<polyline points="([^"]+)"[^>]*data-series="([^"]+)"', dom)
    drawn = {series: len(points.split()) for points, series in curves}
    assert drawn["long loss"] == len(shown) and drawn["long val_loss"] == len(shown), drawn
