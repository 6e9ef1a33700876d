"""A study survives its API being killed: the API is a real uvicorn process, SIGKILLed while the
study's trials train on two real workers and started again; the study completes with exactly
n_trials trials, none sampled twice, and its event stream resumes across the restart with no
event lost or repeated (SQLite and Postgres). A SIGKILLed worker mid-trial is
tests/queue/test_studies.py's test_a_sigkilled_worker_loses_no_trial."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from queue_kit import IRIS_NETWORK, StartWorker, iris_training, wait_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.tables import Job, Study, StudyEvent, StudyTrial

ROOT = Path(__file__).resolve().parents[2]
N_TRIALS = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Api:
    """`uvicorn --factory app.main:create_app` in a process of its own, on the test's database."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.database_url = database_url
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FITSERVE_")}
        env["FITSERVE_DATABASE_URL"] = self.database_url
        argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)
        self.url = f"http://127.0.0.1:{port}"
        wait_for(self._healthy, timeout=180, what="the API to answer /health")
        return self.url

    def _healthy(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log.read_text(errors="replace")[-4000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    api = Api(database_url, tmp_path / "api.log")
    yield api
    if api.process is not None and api.process.poll() is None:
        api.process.terminate()
        api.process.wait(20)


def _events(url: str, study_id: str, after: int, until: Any) -> list[tuple[int, str, dict]]:
    """Read the study's stream from `after` until `until(events)` holds or the stream ends."""
    events: list[tuple[int, str, dict]] = []
    headers = {"Last-Event-ID": str(after)} if after else {}
    with httpx.stream(
        "GET", f"{url}/v1/studies/{study_id}/events", headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        block: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(("event:", "id:", "data:")):
                field, _, value = line.partition(":")
                block[field] = value.strip()
            elif not line and "id" in block:
                events.append((int(block["id"]), block["event"], json.loads(block["data"])))
                block = {}
                if until(events):
                    break
    return events


def test_an_api_killed_mid_study_loses_nothing(
    api: Api,
    sessions: sessionmaker[Session],
    start_worker: StartWorker,
) -> None:
    url = api.start()
    body = {
        "name": "restart-search",
        "dataset": "iris",
        "network": IRIS_NETWORK,
        # batch 5: 24 steps an epoch, 40 epochs: a trial spans the kill, and the study is still
        # sampling when the first trial's end is read (at 12 epochs an idle machine had sampled
        # all 6 by then)
        "training": iris_training(epochs=40, validation_split=0.2, batch_size=5),
        "search_space": {
            "network.layers[0].units": {"int": [2, 16], "log": True},
            "training.optimizer.learning_rate": {"float": [1e-3, 0.1], "log": True},
        },
        "objective": {"metric": "val_loss"},
        "n_trials": N_TRIALS,
        "max_parallel": 2,
        "pruner": "none",
        "seed": 5,
    }
    created = httpx.post(f"{url}/v1/studies", json=body, timeout=60)
    assert created.status_code == 202, created.text
    study_id = created.json()["id"]
    start_worker()
    start_worker()

    def a_trial_ended(events: list[tuple[int, str, dict]]) -> bool:
        return any(kind == "trial" and data["state"] == "complete" for _, kind, data in events)

    before = _events(url, study_id, 0, a_trial_ended)
    assert a_trial_ended(before)
    api.kill()  # mid-study: trials are training, more are still to be sampled
    with sessions() as session:
        status = session.scalar(select(Study.status).where(Study.id == study_id))
        unfinished = session.scalar(
            select(func.count()).where(
                StudyTrial.study_id == study_id, StudyTrial.state != "complete"
            )
        )
        sampled = session.scalar(select(func.count()).where(StudyTrial.study_id == study_id))
    # killed mid-study: trials still to be sampled or still training
    assert status == "running" and sampled is not None and unfinished is not None
    assert sampled < N_TRIALS or unfinished > 0, (sampled, unfinished)

    url = api.start()  # a new process, a new port: nothing of the old one survives
    after = _events(
        url,
        study_id,
        before[-1][0],
        lambda events: any(kind == "status" for _, kind, _ in events),
    )
    ids = [seq for seq, _, _ in before + after]
    assert ids == list(range(1, len(ids) + 1))  # resumed: nothing lost, nothing repeated
    assert after[-1][1:] == ("status", {"status": "completed", "n_trials": N_TRIALS})

    study = httpx.get(f"{url}/v1/studies/{study_id}", timeout=30).json()
    assert study["status"] == "completed"
    trials = study["trials"]
    assert [t["number"] for t in trials] == list(range(N_TRIALS))
    assert {t["state"] for t in trials} == {"complete"}
    assert len({t["job_id"] for t in trials}) == N_TRIALS
    assert study["counts"]["complete"] == N_TRIALS
    with sessions() as session:
        # exactly n_trials trial rows and jobs: none sampled twice, none lost
        rows = session.scalars(select(StudyTrial).where(StudyTrial.study_id == study_id)).all()
        assert len(rows) == N_TRIALS
        jobs = session.scalar(select(func.count()).where(Job.id.in_([t.job_id for t in rows])))
        assert jobs == N_TRIALS
        assert all(
            session.get(Job, t.job_id).status == "succeeded"  # type: ignore[union-attr]
            for t in rows
        )
        started = session.scalar(
            select(func.count()).where(
                StudyEvent.study_id == study_id,
                StudyEvent.kind == "trial",
                StudyEvent.data["state"].as_string() == "running",
            )
        )
        assert started == N_TRIALS  # each trial sampled (and announced) once
