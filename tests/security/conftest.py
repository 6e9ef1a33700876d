"""Fixtures for the security tests: an API with keys required on a real database (SQLite and
Postgres), two keys, row counts, and a live uvicorn for what depends on real HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

import models
from app.auth import create_key
from app.config import Settings
from app.dataset_codec import decode_arrays
from app.db import make_engine
from app.main import create_app
from app.queue import store
from app.tables import ApiKey, Dataset, Job, JobCheckpoint, JobClaim, JobMetric, Model
from tests.conftest import serve

# Small limits, so each limit can be passed with a small request.
TEST_LIMITS = dict(
    max_body_bytes=2_000_000,
    # as large as any body here, so an oversized spec reaches the route's own checks (the cap on
    # spec bodies is tested with the defaults: test_big_bodies.py)
    max_json_body_bytes=2_000_000,
    max_dataset_cells=50_000,
    max_predict_rows=100,
    max_queued_jobs_per_key=20,
)

COUNTED = (ApiKey, Dataset, Job, JobMetric, JobCheckpoint, JobClaim, Model)


@dataclass
class Api:
    """A running app with keys required (uvicorn on loopback), and what the tests need beside it."""

    app: FastAPI
    http: httpx.Client
    settings: Settings
    engine: Engine
    key_a: str
    key_b: str
    owner_a: str
    owner_b: str

    def auth(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"Authorization": f"Bearer {key}"}

    @property
    def a(self) -> dict[str, str]:
        return self.auth(self.key_a)

    @property
    def b(self) -> dict[str, str]:
        return self.auth(self.key_b)

    def row_counts(self) -> dict[str, int]:
        with Session(self.engine) as session:
            return {
                table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
                for table in COUNTED
            }


def _new_key(engine: Engine, name: str) -> tuple[str, str]:
    with Session(engine) as session, session.begin():
        key, secret = create_key(session, name=name)
        return secret, key.id


@pytest.fixture(scope="module")
def api(module_database_url: str) -> Iterator[Api]:
    settings = Settings(database_url=module_database_url, require_api_keys=True, **TEST_LIMITS)
    engine = make_engine(settings.database_url)
    suffix = uuid.uuid4().hex[:8]
    key_a, owner_a = _new_key(engine, f"tenant-a-{suffix}")
    key_b, owner_b = _new_key(engine, f"tenant-b-{suffix}")
    app = create_app(settings)
    try:
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield Api(app, http, settings, engine, key_a, key_b, owner_a, owner_b)
    finally:
        engine.dispose()


# ------------------------------------------------------------------ a model trained for real

IRIS_CSV = (Path(__file__).resolve().parents[2] / "app" / "data" / "iris.csv").read_bytes()


def train_next_job(engine: Engine) -> None:
    """Claim the queued job, train it with models.fit and finish it through the queue's own
    statements: the worker's path, in-process (no subprocess, no polling)."""
    with Session(engine) as session, session.begin():
        claim = store.claim_next_job(session, worker="security-tests", lease_seconds=60)
        assert claim is not None
        dataset = session.get(Dataset, claim.dataset_id)
        assert dataset is not None
        x, y = decode_arrays(dataset)
        network = models.NetworkSpec.model_validate(claim.network)
        result = models.fit(network, claim.training, x, y, device="cpu")
        model = Model(
            owner_id=claim.owner_id,
            dataset_id=claim.dataset_id,
            network=claim.network,
            training=claim.training,
            task=dataset.task,
            classes=dataset.classes,
            weights=models.save_model(result, network),
        )
        last = result.history[-1]
        store.finish_job(
            session,
            job_id=claim.job_id,
            lease_token=claim.lease_token,
            model=model,
            last_epoch=(last.epoch, last.as_dict()),
        )


def train_iris(http: httpx.Client, engine: Engine, headers: dict[str, str]) -> dict[str, str]:
    """Upload iris as CSV, submit a job on it and train it: the ids of the three rows."""
    files = {"file": ("iris.csv", IRIS_CSV, "text/csv")}
    form = {"target": "species", "name": "a-iris"}
    r = http.post("/v1/datasets", files=files, data=form, headers=headers)
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    job = {
        "network": models.spec.IRIS_NETWORK,
        "dataset": dataset,
        "training": {**models.spec.IRIS_TRAINING, "epochs": 2},
    }
    r = http.post("/v1/jobs", json=job, headers=headers)
    assert r.status_code == 202, r.text
    train_next_job(engine)
    r = http.get(f"/v1/jobs/{r.json()['id']}", headers=headers)
    assert r.json()["status"] == "succeeded", r.text
    return {"dataset": dataset, "job": r.json()["id"], "model": r.json()["model_id"]}


@pytest.fixture(scope="module")
def trained(api: Api) -> dict[str, str]:
    """Key A's iris dataset (uploaded as CSV), a job on it trained to success, and its model."""
    return train_iris(api.http, api.engine, api.a)


@pytest.fixture(scope="session")
def iris_trainer() -> Callable[[httpx.Client, Engine, dict[str, str]], dict[str, str]]:
    """`train_iris` for modules that run their own app."""
    return train_iris
