"""A job with more epochs than a page of GET /v1/jobs/{id}/metrics: the Python client and the
dashboard's job page follow the pages, so both still show every epoch (live uvicorn)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from fitserve_client import FitserveClient
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.db import make_engine
from app.services.jobs import METRICS_PAGE
from app.tables import Job, JobMetric
from tests.ux.conftest import IRIS_NETWORK, IRIS_TRAINING, LiveServer, run_chromium

EPOCHS = 2_345  # three of the client's pages, five of the server's default


def _long_job(server: LiveServer) -> str:
    """A cancelled 100,000-epoch job given EPOCHS recorded epochs, as a worker writes them.

    live_api has no worker of its own, but live_server's (session-scoped, on the same database)
    may already be running and claim the job the moment it is queued: the job is cancelled and
    seen ended before its epochs are written, so no worker writes beside them and no later
    test's job waits behind it."""
    with FitserveClient(server.url) as client:
        job = client.submit(IRIS_NETWORK, "iris", IRIS_TRAINING, name="long", epochs=100_000)
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
                    loss=1.0 / e,
                    values={"epoch": e, "loss": 1.0 / e, "accuracy": min(1.0, e / EPOCHS)},
                )
                for e in range(1, EPOCHS + 1)
            )
            session.execute(update(Job).where(Job.id == job.id).values(epoch=EPOCHS))
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
