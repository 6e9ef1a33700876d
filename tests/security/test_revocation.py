"""Revocation reaches what is already open: a revoked key's event streams end within a second,
its queued jobs are cancelled and its running ones asked to stop at their next batch (their
workers read `cancelling` once a second), each recording why. Before, 5 open streams of a revoked
key received 3,542 more events in 11 s, and its jobs ran on with no one able to cancel them.
Through real HTTP, on SQLite and on Postgres."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import create_key, revoke_key
from app.queue import store
from app.studies.conduct import advance_running
from app.tables import Job, Study, StudyTrial
from models.spec import IRIS_NETWORK, IRIS_TRAINING
from tests.security.conftest import Api


def _submit(api: Api, headers: dict[str, str]) -> str:
    body = {"network": IRIS_NETWORK, "dataset": "iris", "training": {**IRIS_TRAINING, "epochs": 5}}
    r = api.http.post("/v1/jobs", json=body, headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_revoking_a_key_ends_its_streams_and_stops_its_jobs(api: Api) -> None:
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    with Session(api.engine) as session, session.begin():
        key, secret = create_key(session, name=name)
        owner = key.id
    headers = {"Authorization": f"Bearer {secret}"}
    running, queued = _submit(api, headers), _submit(api, headers)
    with Session(api.engine) as session, session.begin():
        claim = store.claim_next_job(session, worker="revocation-test", lease_seconds=60)
    assert claim is not None and claim.job_id == running

    url = str(api.http.base_url).rstrip("/")
    ended: list[float] = []
    opened = threading.Event()

    def watch(job_id: str) -> None:
        with httpx.stream(
            "GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=30
        ) as r:
            assert r.status_code == 200
            for _ in r.iter_text():
                opened.set()
        ended.append(time.monotonic())

    watchers = [threading.Thread(target=watch, args=(running,), daemon=True) for _ in range(3)]
    for w in watchers:
        w.start()
    assert opened.wait(10)
    time.sleep(0.6)  # the streams are polling
    assert not ended

    with Session(api.engine) as session, session.begin():
        assert revoke_key(session, name=name) is not None
    revoked_at = time.monotonic()
    for w in watchers:
        w.join(timeout=5)
    assert len(ended) == 3, "a revoked key's event stream stayed open"
    assert max(ended) - revoked_at < 1.5, max(ended) - revoked_at

    with Session(api.engine) as session:
        for job_id, status in ((queued, "cancelled"), (running, "cancelling")):
            job = session.get(Job, job_id)
            assert job is not None
            assert (job.status, job.error_code) == (status, "key_revoked"), job_id
            assert name in (job.error or "") and "revoked" in (job.error or "")
        # The worker holding the running job learns it at its next status read, and stops.
        status = store.job_status(session, job_id=running, lease_token=claim.lease_token)
        assert status == "cancelling"
    assert api.http.get("/v1/jobs", headers=headers).status_code == 401
    # Other keys' jobs are untouched.
    other = _submit(api, api.a)
    with Session(api.engine) as session, session.begin():
        assert revoke_key(session, name=name) is not None  # idempotent
        job = session.get(Job, other)
        assert job is not None and job.status == "queued" and job.owner_id != owner
        store.cancel_job(session, job_id=other)


def test_revoking_a_key_ends_its_study_streams(api: Api) -> None:
    """A study's event stream runs on the job stream's loop: a revoked key's open study stream
    ends at its next poll too (within a second), as the study's stream had no key check of its
    own."""
    name = f"revoked-study-{uuid.uuid4().hex[:8]}"
    with Session(api.engine) as session, session.begin():
        _, secret = create_key(session, name=name)
    headers = {"Authorization": f"Bearer {secret}"}
    body = {
        "name": "doomed-search",
        "dataset": "iris",
        "network": IRIS_NETWORK,
        "training": {**IRIS_TRAINING, "epochs": 5},
        "search_space": {"training.optimizer.learning_rate": {"float": [1e-3, 0.1], "log": True}},
        "objective": {"metric": "loss"},
        "n_trials": 4,
        "max_parallel": 2,
    }
    r = api.http.post("/v1/studies", json=body, headers=headers)
    assert r.status_code == 202, r.text
    study_id = r.json()["id"]

    url = str(api.http.base_url).rstrip("/")
    ended: list[float] = []
    received: list[str] = []
    opened = threading.Event()

    def watch() -> None:
        with httpx.stream(
            "GET", f"{url}/v1/studies/{study_id}/events", headers=headers, timeout=30
        ) as r:
            assert r.status_code == 200
            for chunk in r.iter_text():
                received.append(chunk)
                opened.set()
        ended.append(time.monotonic())

    watchers = [threading.Thread(target=watch, daemon=True) for _ in range(2)]
    for w in watchers:
        w.start()
    assert opened.wait(10)
    time.sleep(0.6)  # the streams are polling
    assert not ended
    assert any("event: trial" in chunk for chunk in received)  # the study's own events

    with Session(api.engine) as session, session.begin():
        assert revoke_key(session, name=name) is not None
    revoked_at = time.monotonic()
    for w in watchers:
        w.join(timeout=5)
    assert len(ended) == 2, "a revoked key's study stream stayed open"
    assert max(ended) - revoked_at < 1.5, max(ended) - revoked_at
    assert api.http.get(f"/v1/studies/{study_id}/events", headers=headers).status_code == 401
    # The study is cancelled with its trials: no worker's sweep samples trials for the key.
    with Session(api.engine) as session:
        study = session.get(Study, study_id)
        assert study is not None and study.status == "cancelled"
        trials = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)).all()
        assert len(trials) == 2 and {t.state for t in trials} == {"cancelled"}
        advance_running(session, settings=api.settings)
        assert session.scalar(select(func.count()).where(StudyTrial.study_id == study_id)) == 2
