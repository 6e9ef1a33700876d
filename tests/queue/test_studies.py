"""Studies run on real worker processes: trials are ordinary jobs on the shared queue, at most
max_parallel in flight, the next asked for when one ends, pruned at an epoch's end; a SIGKILLed
worker loses nothing and the study still ends with exactly n_trials trials (SQLite and Postgres).
"""

from __future__ import annotations

import json
import signal
from typing import Any

from queue_kit import IRIS_NETWORK, StartWorker, iris_training, wait_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.dashboard import study_pages
from app.services import studies
from app.studies.schemas import StudyCreate
from app.tables import Job, JobMetric, Study, StudyEvent, StudyTrial


def _create(sessions: sessionmaker[Session], database_url: str, dataset: str, **fields: Any) -> str:
    body = {
        "name": "iris-search",
        "dataset": dataset,
        "network": IRIS_NETWORK,
        "training": iris_training(epochs=6, validation_split=0.2, batch_size=30),
        "search_space": {
            "network.layers[0].units": {"int": [2, 16], "log": True},
            "training.optimizer.learning_rate": {"float": [1e-4, 0.1], "log": True},
        },
        "objective": {"metric": "val_loss"},
        "n_trials": 6,
        "max_parallel": 2,
        "seed": 3,
        **fields,
    }
    with sessions.begin() as session:
        read = studies.create_study(
            session,
            owner=None,
            body=StudyCreate.model_validate_json(json.dumps(body)),
            settings=Settings(database_url=database_url),
        )
        return read.id


def _study(sessions: sessionmaker[Session], study_id: str) -> Study:
    with sessions() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study


def _trials(sessions: sessionmaker[Session], study_id: str) -> list[StudyTrial]:
    with sessions() as session:
        return list(
            session.scalars(
                select(StudyTrial)
                .where(StudyTrial.study_id == study_id)
                .order_by(StudyTrial.number)
            )
        )


def _epochs(sessions: sessionmaker[Session], job_id: str) -> int:
    with sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job_id)
            )
            or 0
        )


def _completed(sessions: sessionmaker[Session], study_id: str) -> bool:
    return _study(sessions, study_id).status == "completed"


def test_a_study_fans_its_trials_over_two_workers_and_completes(
    sessions: sessionmaker[Session], iris_id: str, database_url: str, start_worker: StartWorker
) -> None:
    study_id = _create(sessions, database_url, iris_id, pruner="none")
    first = _trials(sessions, study_id)
    assert [t.number for t in first] == [0, 1]  # max_parallel trials asked for up front
    workers = [start_worker(), start_worker()]
    wait_for(lambda: _completed(sessions, study_id), timeout=120, what="the study to complete")
    trials = _trials(sessions, study_id)
    assert [t.number for t in trials] == list(range(6))
    assert {t.state for t in trials} == {"complete"}
    assert len({t.job_id for t in trials}) == 6
    with sessions() as session:
        jobs = {
            j.id: j
            for j in session.scalars(select(Job).where(Job.id.in_([t.job_id for t in trials])))
        }
    for trial in trials:
        job = jobs[trial.job_id]
        assert job.status == "succeeded"
        # the sampled params are what the job trained
        assert job.network["layers"][0]["units"] == trial.params["network.layers[0].units"]
        assert (
            job.training["optimizer"]["learning_rate"]
            == trial.params["training.optimizer.learning_rate"]
        )
        with sessions() as session:
            last = session.get(JobMetric, (job.id, job.epochs))
        assert last is not None and trial.value == last.values["val_loss"]
    # the event log: every trial's start, each epoch, its end, then the study's end
    with sessions() as session:
        events = list(
            session.scalars(
                select(StudyEvent).where(StudyEvent.study_id == study_id).order_by(StudyEvent.seq)
            )
        )
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(e.kind == "epoch" for e in events) == 6 * 6
    # each epoch event names its trial and epoch in columns too (the indexed "told yet?" lookup)
    assert all(
        (e.trial_number, e.epoch) == (e.data["number"], e.data["epoch"])
        for e in events
        if e.kind == "epoch"
    )
    assert sum(e.kind == "trial" and e.data["state"] == "complete" for e in events) == 6
    assert (events[-1].kind, events[-1].data["status"]) == ("status", "completed")
    # the dashboard's study page draws every trial's curve and marks the best
    with sessions() as session:
        read = studies.get_study(session, owner=None, study_id=study_id)
        page = study_pages.study_page(read, studies.objective_curves(session, study=read))
    assert page.count('class="trial"') == 6
    assert read.best_trial is not None
    assert f'data-trial="{read.best_trial.number}"' in page and "★" in page
    assert page.count("<circle") == 2 * 6  # one dot per trial on each parameter's scatter
    # different workers ran trials
    with sessions() as session:
        claimed_by = set(session.scalars(select(Job.claimed_by).where(Job.id.in_(jobs))))
    assert len(claimed_by) == 2
    for worker in workers:
        assert worker.stop() == 0


def test_never_more_than_max_parallel_trials_in_flight(
    sessions: sessionmaker[Session], iris_id: str, database_url: str, start_worker: StartWorker
) -> None:
    study_id = _create(sessions, database_url, iris_id, pruner="none", max_parallel=1, n_trials=3)
    start_worker()
    start_worker()
    seen: list[int] = []

    def in_flight() -> bool:
        trials = _trials(sessions, study_id)
        seen.append(sum(t.state == "running" for t in trials))
        return _completed(sessions, study_id)

    wait_for(in_flight, timeout=120, what="the study to complete")
    assert max(seen) == 1
    assert len(_trials(sessions, study_id)) == 3


def test_the_median_pruner_stops_trials_at_an_epoch_end(
    sessions: sessionmaker[Session], iris_id: str, database_url: str, start_worker: StartWorker
) -> None:
    # Half the trials get a learning rate too small to learn anything in 8 epochs. Every trial
    # trains from the same seed, so the good ones share one loss curve: once 5 trials have
    # finished, a bad trial is worse than their median at every epoch and is pruned, a good one
    # never is.
    study_id = _create(
        sessions,
        database_url,
        iris_id,
        training=iris_training(epochs=8, batch_size=30),
        search_space={"training.optimizer.learning_rate": {"choice": [1e-6, 0.05]}},
        objective={"metric": "loss"},
        sampler="random",
        n_trials=12,
        max_parallel=1,
        pruner="median",
    )
    start_worker()
    wait_for(lambda: _completed(sessions, study_id), timeout=180, what="the study to complete")
    trials = _trials(sessions, study_id)
    assert len(trials) == 12
    pruned = [t for t in trials if t.state == "pruned"]
    assert pruned, [(t.params, t.state, t.value) for t in trials]
    for trial in pruned:
        assert trial.params["training.optimizer.learning_rate"] == 1e-6
        # stopped at the epoch the pruner judged: no later epoch recorded
        assert trial.pruned_at_epoch is not None and trial.pruned_at_epoch < 8
        assert _epochs(sessions, trial.job_id) == trial.pruned_at_epoch
        with sessions() as session:
            job = session.get(Job, trial.job_id)
        assert job is not None and job.status == "cancelled" and job.error_code == "pruned"
    assert all(t.state == "complete" for t in trials if t not in pruned)
    # the first 5 trials are Optuna's startup: none of them is judged
    assert all(t.number >= 5 for t in pruned)


def test_a_sigkilled_worker_loses_no_trial(
    sessions: sessionmaker[Session], iris_id: str, database_url: str, start_worker: StartWorker
) -> None:
    study_id = _create(
        sessions,
        database_url,
        iris_id,
        pruner="none",
        n_trials=4,
        training=iris_training(epochs=40, validation_split=0.2, batch_size=5),
    )
    doomed = start_worker()
    wait_for(
        lambda: any(_epochs(sessions, t.job_id) >= 2 for t in _trials(sessions, study_id)),
        timeout=60,
        what="a trial to be under way",
    )
    doomed.signal(signal.SIGKILL)
    doomed.process.join(10)
    start_worker(lease_seconds=2.0, heartbeat_seconds=0.5)
    wait_for(lambda: _completed(sessions, study_id), timeout=240, what="the study to complete")
    trials = _trials(sessions, study_id)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {t.state for t in trials} == {"complete"}
    with sessions() as session:
        attempts = [session.get(Job, t.job_id).attempts for t in trials]  # type: ignore[union-attr]
    assert max(attempts) >= 2  # the killed trial was resumed, not sampled again
