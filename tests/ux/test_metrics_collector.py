"""The /metrics collector's queries on both databases: counts by status, queue depth, epochs in the
rate window, summed epoch seconds, and busy workers' heartbeats — from rows written here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.prometheus import DatabaseCollector
from app.queue.clock import db_now
from app.tables import Dataset, Job, JobMetric


@pytest.fixture
def make_session(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_collector_reads_the_rows(make_session: sessionmaker[Session]) -> None:
    with make_session.begin() as session:
        dataset = Dataset(
            name="empty", task="regression", rows=0, n_features=1, feature_names=["x"],
            target_names=["y"], features=b"", targets=b"", sha256="0" * 64,
        )  # fmt: skip
        session.add(dataset)
        session.flush()

        def job(status: str, **kw: object) -> Job:
            row = Job(dataset_id=dataset.id, network={}, training={}, epochs=5, status=status, **kw)
            session.add(row)
            return row

        job("queued")
        job("queued")
        job("queued", available_at=db_now(3600))  # backing off: not claimable yet
        running = job("running", claimed_by="gpu-1", heartbeat_at=db_now(-3), started_at=db_now())
        job("succeeded", finished_at=db_now())
        session.flush()
        for epoch, age in ((1, -600), (2, -5), (3, -1)):
            values = {"epoch": epoch, "loss": 1.0, "seconds": 0.25 * epoch}
            session.add(
                JobMetric(job_id=running.id, epoch=epoch, loss=1.0, values=values,
                          created_at=db_now(age))
            )  # fmt: skip

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(make_session))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("fitserve_jobs", status="queued") == 3
    assert sample("fitserve_jobs", status="running") == 1
    assert sample("fitserve_jobs", status="failed") == 0
    assert sample("fitserve_queue_depth") == 2
    assert sample("fitserve_epochs_total") == 3
    assert sample("fitserve_training_seconds_total") == pytest.approx(1.5)
    assert sample("fitserve_epochs_per_second") == pytest.approx(2 / 60)
    assert sample("fitserve_workers_busy") == 1
    age = sample("fitserve_worker_heartbeat_age_seconds", worker="gpu-1")
    assert age is not None and 2.5 <= age < 60
