"""Running a study: ask for trials, enqueue them as jobs, tell the ended ones, prune per epoch.

Everything here is a statement (or a few) in the caller's transaction, with the study row locked
(`FOR UPDATE` on Postgres; SQLite transactions are `BEGIN IMMEDIATE`, one writer at a time), so
whichever process calls it — the API when a study is created or cancelled, a worker after a
trial's epoch or attempt, any worker's periodic sweep — the decisions are the same and no trial
is sampled twice. State lives only in the database: an API restart or a SIGKILLed worker loses
nothing, since the next call rebuilds the sampler's and pruner's view from the rows.

Trial states follow their jobs: `running` while the job is queued or running, then `complete`
(succeeded; its value is the objective after the last epoch), `failed`, `cancelled` (a user
stopped the job or the study), or `pruned` (set here, at the epoch the pruner stopped it; the
job then ends `cancelled` with `error_code` "pruned" and its metrics kept).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import models
from app.config import Settings
from app.errors import Unprocessable
from app.job_status import TERMINAL, JobStatus
from app.queue import store
from app.queue.clock import db_now
from app.services import registry
from app.services.jobs import check_trainable, new_job
from app.studies import tuner
from app.studies.space import Dimension, SpaceError, apply, parse_space
from app.tables import Dataset, Job, JobMetric, Study, StudyEvent, StudyTrial

log = logging.getLogger("fitserve.studies")


def plan_of(study: Study) -> tuner.StudyPlan:
    return tuner.StudyPlan(
        study_id=study.id,
        dimensions=parse_space(study.search_space),
        direction=study.direction,  # type: ignore[arg-type]
        sampler=study.sampler,  # type: ignore[arg-type]
        pruner=study.pruner,  # type: ignore[arg-type]
        seed=study.seed,
        epochs=int(study.training.get("epochs", 1)),
    )


def sample_spec(
    base: dict[str, Any],
    dimensions: list[Dimension],
    values: dict[str, Any],
    *,
    dataset: Dataset,
    settings: Settings,
) -> tuple[models.NetworkSpec, models.TrainingConfig]:
    """The spec with `values` written in, validated as a submitted job's would be (422 if not)."""
    try:
        doc = apply(base, dimensions, values)
    except SpaceError as exc:
        raise Unprocessable(
            f"search_space[{exc.path!r}]: {exc.message}",
            loc=("body", "search_space", exc.path or ""),
        ) from None
    shown = ", ".join(f"{path}={value!r}" for path, value in values.items())
    try:
        network = models.NetworkSpec.model_validate_json(orjson.dumps(doc["network"]))
        training = models.TrainingConfig.model_validate_json(orjson.dumps(doc["training"]))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise Unprocessable(
            f"with {shown} the spec is invalid at {where or 'the top level'}: {error['msg']}; "
            "narrow the search space",
            loc=("body", "search_space"),
        ) from None
    try:
        check_trainable(network, training, dataset=dataset, settings=settings)
    except Unprocessable as exc:
        raise Unprocessable(
            f"with {shown}: {exc.message}; narrow the search space", loc=("body", "search_space")
        ) from None
    return network, training


def lock_study(session: Session, study_id: str) -> Study | None:
    return session.scalar(select(Study).where(Study.id == study_id).with_for_update())


def emit(session: Session, study: Study, kind: str, data: dict[str, Any]) -> None:
    """Append to the study's event log (the caller holds the study row's lock)."""
    last = session.scalar(select(func.max(StudyEvent.seq)).where(StudyEvent.study_id == study.id))
    epoch_of = (data["number"], data["epoch"]) if kind == "epoch" else (None, None)
    session.add(
        StudyEvent(
            study_id=study.id,
            seq=(last or 0) + 1,
            kind=kind,
            data=data,
            trial_number=epoch_of[0],
            epoch=epoch_of[1],
        )
    )
    session.flush()


def trial_event(trial: StudyTrial, **extra: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "job_id": trial.job_id,
        "state": trial.state,
        "params": trial.params,
        "value": trial.value,
        **extra,
    }


def status_event(study: Study) -> dict[str, Any]:
    return {"status": study.status, "n_trials": study.n_trials}


def trial_records(
    session: Session, study: Study
) -> tuple[list[StudyTrial], list[tuner.TrialRecord]]:
    """The study's trials and, for the tuner, each one's objective per epoch."""
    trials = list(
        session.scalars(
            select(StudyTrial).where(StudyTrial.study_id == study.id).order_by(StudyTrial.number)
        )
    )
    per_job: dict[str, dict[int, float]] = defaultdict(dict)
    if trials:
        rows = session.execute(
            select(JobMetric.job_id, JobMetric.epoch, JobMetric.values).where(
                JobMetric.job_id.in_([t.job_id for t in trials])
            )
        )
        for job_id, epoch, values in rows:
            value = _objective(values, study.objective_metric)
            if value is not None:
                per_job[job_id][epoch] = value
    records = [
        tuner.TrialRecord(
            number=t.number,
            params=dict(t.params),
            state=t.state,  # type: ignore[arg-type]
            value=t.value,
            intermediate=per_job[t.job_id],
            grid_id=t.grid_id,
            pruner_attrs=dict(t.pruner_attrs or {}),
        )
        for t in trials
    ]
    return trials, records


def _objective(values: dict[str, Any] | None, metric: str) -> float | None:
    value = (values or {}).get(metric)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def tell(session: Session, study: Study, trials: list[StudyTrial]) -> None:
    """Trials whose jobs have ended take their final state (and value)."""
    for trial in trials:
        if trial.state != "running":
            continue
        job = session.get(Job, trial.job_id)
        if job is None or job.status not in TERMINAL:
            continue
        if job.status == JobStatus.SUCCEEDED:
            last = session.get(JobMetric, (job.id, job.epoch)) if job.epoch > 0 else None
            trial.value = _objective(last.values if last else None, study.objective_metric)
            trial.state = "complete"
            # The last epoch arrives with the finished job, not through report_epoch.
            if last is not None and not _epoch_told(session, study, trial.number, job.epoch):
                emit(
                    session,
                    study,
                    "epoch",
                    {"number": trial.number, "epoch": job.epoch, "value": trial.value},
                )
        else:
            trial.state = "failed" if job.status == JobStatus.FAILED else "cancelled"
        trial.finished_at = job.finished_at
        emit(session, study, "trial", trial_event(trial, epochs_run=job.epoch))


class _Judged(Protocol):
    @property
    def number(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def value(self) -> float | None: ...


T = TypeVar("T", bound=_Judged)


def best_of(direction: str, trials: Sequence[T]) -> T | None:
    """The study's best trial: the complete one with the best objective, the earliest on ties."""
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    if not done:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def register_best(session: Session, study: Study, trials: list[StudyTrial]) -> None:
    """A completed study's best model, as the next version of its model name (MLflow users
    register a tuning run's best model under one name; each study of that name adds one)."""
    best = best_of(study.direction, trials)
    if best is None or study.register_as is None:  # no trial completed; or made before 0011
        return
    model_id = session.scalar(select(Job.model_id).where(Job.id == best.job_id))
    if model_id is None:
        log.warning("study %s: the best trial's model was deleted; nothing registered", study.id)
        return
    version = registry.register(
        session, owner=study.owner_id, name=study.register_as, model_id=model_id
    )
    study.registered_version = version.version


def _epoch_told(session: Session, study: Study, number: int, epoch: int) -> bool:
    """Whether the study's log has trial `number`'s epoch `epoch` (ix_study_events_trial_epoch)."""
    told = select(StudyEvent.seq).where(
        StudyEvent.study_id == study.id,
        StudyEvent.trial_number == number,
        StudyEvent.epoch == epoch,
    )
    return session.scalar(told.limit(1)) is not None


def advance(session: Session, *, study_id: str, settings: Settings) -> None:
    """Tell the ended trials, then ask for new ones until `max_parallel` are in flight or
    `n_trials` have been sampled; a study whose trials have all ended is `completed`."""
    study = lock_study(session, study_id)
    if study is None:
        return
    trials, records = trial_records(session, study)
    tell(session, study, trials)
    for trial, record in zip(trials, records, strict=True):
        record.state, record.value = trial.state, trial.value  # type: ignore[assignment]
    if study.status != "running":
        return
    plan = plan_of(study)
    in_flight = sum(t.state == "running" for t in trials)
    dataset = session.get(Dataset, study.dataset_id)
    while in_flight < study.max_parallel and len(records) < study.n_trials:
        params, grid_id = tuner.ask(plan, records)
        number = len(records)
        job = _trial_job(
            session, study, plan, params, number=number, dataset=dataset, settings=settings
        )
        trial = StudyTrial(
            study_id=study.id,
            number=number,
            job_id=job.id,
            params=params,
            grid_id=grid_id,
            state="running" if job.status == JobStatus.QUEUED else "failed",
        )
        session.add(trial)
        session.flush()
        emit(session, study, "trial", trial_event(trial))
        records.append(tuner.TrialRecord(number, params, trial.state, grid_id=grid_id))  # type: ignore[arg-type]
        trials.append(trial)
        in_flight += trial.state == "running"
    session.flush()
    if len(trials) >= study.n_trials and all(t.state != "running" for t in trials):
        study.status = "completed"
        study.finished_at = db_now()  # type: ignore[assignment]
        register_best(session, study, trials)
        emit(session, study, "status", status_event(study))
        log.info("study %s completed with %d trials", study.id, len(trials))


def _trial_job(
    session: Session,
    study: Study,
    plan: tuner.StudyPlan,
    params: dict[str, Any],
    *,
    number: int,
    dataset: Dataset | None,
    settings: Settings,
) -> Job:
    """The queued job of a new trial; one that can't train (the dataset is gone, or an inner
    point of the space the corners didn't rule out) is stored `failed` with the reason."""
    base = {"network": study.network, "training": study.training}
    name = f"{study.name[:190]} #{number}"
    try:
        if dataset is None or dataset.deleted_at is not None:
            raise Unprocessable(f"dataset {study.dataset_id} no longer exists")
        network, training = sample_spec(
            base, plan.dimensions, params, dataset=dataset, settings=settings
        )
    except Unprocessable as exc:
        job = Job(
            owner_id=study.owner_id,
            name=name,
            dataset_id=study.dataset_id,
            network=study.network,
            training=study.training,
            status="failed",
            epochs=int(study.training.get("epochs", 1)),
            error=exc.message,
            error_code="invalid_trial",
            finished_at=db_now(),
        )
        session.add(job)
        session.flush()
        return job
    job = new_job(
        owner=study.owner_id,
        name=name,
        dataset_id=study.dataset_id,
        network=network,
        training=training,
        settings=settings,
    )
    store.enqueue_job(session, job=job)
    return job


def is_trial(session: Session, *, job_id: str) -> bool:
    return session.scalar(select(StudyTrial.number).where(StudyTrial.job_id == job_id)) is not None


def report_epoch(session: Session, *, job_id: str, epoch: int) -> bool:
    """A trial's epoch has been recorded: ask the pruner. True when the trial is pruned here (its
    job is then `cancelling`: the worker stops it and records no later epoch)."""
    study_id = session.scalar(
        select(StudyTrial.study_id).where(
            StudyTrial.job_id == job_id, StudyTrial.state == "running"
        )
    )
    if study_id is None:
        return False
    study = lock_study(session, study_id)
    if study is None or study.status != "running":
        return False
    trials, records = trial_records(session, study)
    trial = next(t for t in trials if t.job_id == job_id)
    record = records[trials.index(trial)]
    emit(
        session,
        study,
        "epoch",
        {"number": trial.number, "epoch": epoch, "value": record.intermediate.get(epoch)},
    )
    prune, noted = tuner.should_prune(plan_of(study), records, trial.number)
    if noted != (trial.pruner_attrs or {}):
        trial.pruner_attrs = noted
    if not prune:
        session.flush()
        return False
    trial.state = "pruned"
    trial.pruned_at_epoch = epoch
    trial.value = record.intermediate.get(epoch)
    trial.finished_at = db_now()  # type: ignore[assignment]
    store.cancel_job(session, job_id=job_id)
    job = session.get(Job, job_id)
    assert job is not None
    job.error = f"pruned by the study's {study.pruner} pruner after epoch {epoch}"
    job.error_code = "pruned"
    emit(session, study, "trial", trial_event(trial, epochs_run=epoch))
    log.info("study %s: trial %d pruned after epoch %d", study.id, trial.number, epoch)
    return True


def advance_for_job(session: Session, *, job_id: str, settings: Settings) -> None:
    """After a trial's attempt: tell its study, and ask for the next trial at once."""
    study_id = session.scalar(select(StudyTrial.study_id).where(StudyTrial.job_id == job_id))
    if study_id is not None:
        advance(session, study_id=study_id, settings=settings)


def advance_running(session: Session, *, settings: Settings) -> None:
    """The sweep: advance every running study (trials whose jobs ended where no worker saw it,
    such as a queued trial a user cancelled)."""
    for study_id in list(session.scalars(select(Study.id).where(Study.status == "running"))):
        advance(session, study_id=study_id, settings=settings)


def cancel(session: Session, *, study_id: str) -> None:
    """running -> cancelled: no trial is sampled any more; queued trials are cancelled at once and
    running ones stop at their next batch (their trials end `cancelled`). A study that has
    ended is left as it is."""
    study = lock_study(session, study_id)
    if study is None or study.status != "running":
        return
    study.status = "cancelled"
    study.finished_at = db_now()  # type: ignore[assignment]
    for trial in session.scalars(
        select(StudyTrial).where(StudyTrial.study_id == study.id, StudyTrial.state == "running")
    ):
        try:
            store.cancel_job(session, job_id=trial.job_id)
        except store.JobConflict:
            continue  # it ended just now: the trial keeps the job's outcome, told below
    session.flush()
    trials, _ = trial_records(session, study)
    tell(session, study, trials)
    for trial in trials:
        if trial.state == "running":
            trial.state = "cancelled"
            emit(session, study, "trial", trial_event(trial))
    emit(session, study, "status", status_event(study))


def cancel_owner_studies(session: Session, *, owner_id: str) -> list[str]:
    """A revoked key's running studies end `cancelled`: otherwise the sweep would go on sampling
    trials, and queuing jobs, for a key that no longer authenticates. Returns the studies."""
    running = list(
        session.scalars(
            select(Study.id).where(Study.owner_id == owner_id, Study.status == "running")
        )
    )
    for study_id in running:
        cancel(session, study_id=study_id)
    return running
