"""The event generator on a real (SQLite and Postgres) database, without HTTP: keep-alive comments
while nothing happens, status then epochs in order, and a stream for another key's job is empty."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.auth import create_key
from app.db import make_engine, make_sessionmaker
from app.queue.clock import db_now
from app.services.events import stream_events
from app.tables import Dataset, Job, JobMetric


@pytest.fixture
def make_session(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def add_job(make_session: sessionmaker[Session], *, owner: str | None = None) -> str:
    with make_session.begin() as session:
        # The stream never reads the dataset: an empty one keeps the foreign key satisfied.
        dataset = Dataset(
            name="empty", task="regression", rows=0, n_features=1, feature_names=["x"],
            target_names=["y"], features=b"", targets=b"", sha256="0" * 64,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        job = Job(
            owner_id=owner,
            dataset_id=dataset.id,
            network={},
            training={},
            epochs=3,
            status="queued",
        )
        session.add(job)
        session.flush()
        return job.id


def collect(
    make_session: sessionmaker[Session], job_id: str, count: int, **kw: object
) -> list[str]:
    async def run() -> list[str]:
        chunks = []
        stream = stream_events(make_session, job_id=job_id, **kw)  # type: ignore[arg-type]
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) >= count:
                break
        await stream.aclose()
        return chunks

    return anyio.run(run)


def test_keep_alive_comments_while_a_job_waits(make_session: sessionmaker[Session]) -> None:
    job_id = add_job(make_session)
    chunks = collect(
        make_session, job_id, 4, owner=None, after=0, poll_seconds=0.01, keepalive_seconds=0.05
    )
    assert chunks[0].startswith("retry:")
    assert chunks[1].startswith("event: status\nid: 0\n") and '"status":"queued"' in chunks[1]
    assert chunks[2:] == [": keep-alive\n\n", ": keep-alive\n\n"]


def test_epochs_then_terminal_status_last(make_session: sessionmaker[Session]) -> None:
    job_id = add_job(make_session)
    with make_session.begin() as session:
        for epoch in (1, 2, 3):
            values = {"epoch": epoch, "loss": 1.0 / epoch, "seconds": 0.01}
            session.add(
                JobMetric(job_id=job_id, epoch=epoch, loss=1.0 / epoch, values=values,
                          created_at=db_now())
            )  # fmt: skip
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.epoch, job.finished_at = "failed", 3, db_now()
        job.error = "the loss became NaN at epoch 3: lower the learning rate"
    text = "".join(collect(make_session, job_id, 10, owner=None, after=1, poll_seconds=0.01))
    blocks = [b for b in text.split("\n\n") if b and not b.startswith("retry")]
    assert [b.split("\n")[0] for b in blocks] == ["event: epoch", "event: epoch", "event: status"]
    assert blocks[0].split("\n")[1] == "id: 2" and blocks[1].split("\n")[1] == "id: 3"
    assert '"status":"failed"' in blocks[2] and "lower the learning rate" in blocks[2]


def test_another_keys_job_streams_nothing(make_session: sessionmaker[Session]) -> None:
    with make_session.begin() as session:
        owner_a, _ = create_key(session, name="a")
        owner_b, _ = create_key(session, name="b")
        a_id, b_id = owner_a.id, owner_b.id
    job_id = add_job(make_session, owner=a_id)
    assert collect(make_session, job_id, 5, owner=b_id, after=0, poll_seconds=0.01) == [
        "retry: 1000\n\n"
    ]
    mine = collect(make_session, job_id, 2, owner=a_id, after=0, poll_seconds=0.01)
    assert '"status":"queued"' in mine[1]
