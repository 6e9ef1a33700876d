"""Study use cases: create (validate the space's corners, then ask for the first trials in the
request's transaction), list, read, cancel."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.errors import NotFound, Unprocessable
from app.services import events, is_id, owned_by, registry
from app.services.datasets import resolve_dataset
from app.services.jobs import check_trainable
from app.studies import conduct
from app.studies.schemas import (
    Objective,
    StudyCounts,
    StudyCreate,
    StudyRead,
    StudySummary,
    TrialRead,
)
from app.studies.space import Dimension, SpaceError, grid_points, parse_space
from app.tables import Dataset, Job, JobMetric, Study, StudyEvent, StudyTrial

# The metric each task's epochs report (models.EpochRecord), with and without validation data.
_TASK_METRICS = {"classification": ("loss", "accuracy"), "regression": ("loss", "mae")}


def create_study(
    session: Session, *, owner: str | None, body: StudyCreate, settings: Settings
) -> StudyRead:
    register_as = registry.name_for(body.name)
    if register_as is None:
        raise Unprocessable(
            f"study name {body.name!r} leaves no model name to register the best model under: "
            "use at least one letter a-z or digit 0-9 (and not 32 hex characters)",
            loc=("body", "name"),
        )
    dataset = resolve_dataset(session, owner=owner, ref=body.dataset)
    check_trainable(body.network, body.training, dataset=dataset, settings=settings)
    try:
        dimensions = parse_space(body.search_space)
    except SpaceError as exc:
        loc = ("body", "search_space", exc.path) if exc.path else ("body", "search_space")
        where = f"search_space[{exc.path!r}]: " if exc.path else "search_space: "
        raise Unprocessable(where + exc.message, loc=loc) from None
    base = {
        "network": body.network.model_dump(mode="json", exclude_none=True),
        "training": body.training.model_dump(mode="json", exclude_none=True),
    }
    corners = _corner_samples(dimensions, base, dataset=dataset, settings=settings)
    _check_objective(body.objective, corners, task=dataset.task)
    if body.sampler == "grid":
        try:
            size = len(grid_points(dimensions))
        except SpaceError as exc:
            raise Unprocessable(
                f"search_space: {exc.message}", loc=("body", "search_space")
            ) from None
        if body.n_trials > size:
            raise Unprocessable(
                f"the grid has {size} points, so a grid search runs at most {size} trials: "
                f"set n_trials to {size} or less",
                loc=("body", "n_trials"),
            )
    metric = body.objective.metric
    study = Study(
        owner_id=owner,
        name=body.name,
        dataset_id=dataset.id,
        network=base["network"],
        training=base["training"],
        search_space=body.search_space,
        objective_metric=metric,
        direction=body.objective.direction or _default_direction(metric),
        n_trials=body.n_trials,
        max_parallel=body.max_parallel,
        sampler=body.sampler,
        pruner=body.pruner,
        seed=body.seed,
        status="running",
        register_as=register_as,
    )
    session.add(study)
    session.flush()
    conduct.emit(session, study, "status", conduct.status_event(study))
    conduct.advance(session, study_id=study.id, settings=settings)
    return get_study(session, owner=owner, study_id=study.id)


def _default_direction(metric: str) -> str:
    return "maximize" if metric.endswith("accuracy") else "minimize"


def _corner_samples(
    dimensions: list[Dimension], base: dict[str, Any], *, dataset: Dataset, settings: Settings
) -> list[Any]:
    """Validate the space's extremes against the spec and the dataset (422 naming the corner):
    each value of each dimension with the others at their largest, and all at their largest
    together (the parameter budget's worst case, for the numeric ones). Returns the training
    configs seen, for the objective check."""
    largest = {dim.path: dim.corners()[-1] for dim in dimensions}
    samples = [largest]
    for dim in dimensions:
        samples += [{**largest, dim.path: value} for value in dim.corners()]
    seen: set[str] = set()
    trainings = []
    for values in samples:
        key = repr(sorted(values.items(), key=lambda kv: kv[0]))
        if key in seen:
            continue
        seen.add(key)
        _, training = conduct.sample_spec(
            base, dimensions, values, dataset=dataset, settings=settings
        )
        trainings.append(training)
    return trainings


def _check_objective(objective: Objective, trainings: list[Any], *, task: str) -> None:
    metric = objective.metric
    plain = metric.removeprefix("val_")
    if plain not in _TASK_METRICS[task]:
        produced = ", ".join(m for p in _TASK_METRICS[task] for m in (p, f"val_{p}"))
        raise Unprocessable(
            f"a {task} job reports no {metric!r}: choose one of {produced}",
            loc=("body", "objective", "metric"),
        )
    if metric.startswith("val_") and any(t.validation_split <= 0 for t in trainings):
        raise Unprocessable(
            f"{metric!r} needs validation data: set training.validation_split above 0 "
            "(in every corner of the search space), or use a training metric",
            loc=("body", "objective", "metric"),
        )


def _get(session: Session, *, owner: str | None, study_id: str) -> Study:
    study = None
    if is_id(study_id):
        study = session.scalar(
            select(Study).where(Study.id == study_id, owned_by(Study.owner_id, owner))
        )
    if study is None:
        raise NotFound(f"study {study_id!r} not found; list yours with GET /v1/studies")
    return study


def _trial_views(session: Session, study_ids: list[str]) -> dict[str, list[TrialRead]]:
    """The trials of these studies, by study, each study's in number order: one query."""
    views: dict[str, list[TrialRead]] = {study_id: [] for study_id in study_ids}
    if not study_ids:
        return views
    rows = session.execute(
        select(StudyTrial, Job.epoch, Job.model_id)
        .join(Job, Job.id == StudyTrial.job_id)
        .where(StudyTrial.study_id.in_(study_ids))
        .order_by(StudyTrial.study_id, StudyTrial.number)
    )
    for trial, epoch, model_id in rows:
        views[trial.study_id].append(
            TrialRead(
                number=trial.number,
                job_id=trial.job_id,
                params=trial.params,
                state=trial.state,  # type: ignore[arg-type]
                value=trial.value,
                epochs_run=epoch,
                pruned_at_epoch=trial.pruned_at_epoch,
                model_id=model_id if trial.state == "complete" else None,
                created_at=trial.created_at,
                finished_at=trial.finished_at,
            )
        )
    return views


def _summary_fields(study: Study, trials: list[TrialRead]) -> dict[str, Any]:
    counts = Counter(t.state for t in trials)
    return {
        "id": study.id,
        "name": study.name,
        "dataset_id": study.dataset_id,
        "status": study.status,
        "objective": Objective(metric=study.objective_metric, direction=study.direction),  # type: ignore[arg-type]
        "n_trials": study.n_trials,
        "max_parallel": study.max_parallel,
        "sampler": study.sampler,
        "pruner": study.pruner,
        "seed": study.seed,
        "counts": StudyCounts.model_validate(dict(counts)),
        "best_trial": conduct.best_of(study.direction, trials),
        "register_as": study.register_as,
        "registered_version": study.registered_version,
        "created_at": study.created_at,
        "finished_at": study.finished_at,
    }


def get_study(session: Session, *, owner: str | None, study_id: str) -> StudyRead:
    study = _get(session, owner=owner, study_id=study_id)
    trials = _trial_views(session, [study.id])[study.id]
    return StudyRead(
        **_summary_fields(study, trials),
        search_space=study.search_space,
        network=study.network,
        training=study.training,
        trials=trials,
    )


def list_studies(
    session: Session, *, owner: str | None, limit: int = 100, offset: int = 0
) -> list[StudySummary]:
    studies = list(
        session.scalars(
            select(Study)
            .where(owned_by(Study.owner_id, owner))
            .order_by(Study.created_at.desc(), Study.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    trials = _trial_views(session, [s.id for s in studies])  # all the page's trials at once
    return [StudySummary(**_summary_fields(s, trials[s.id])) for s in studies]


def cancel_study(session: Session, *, owner: str | None, study_id: str) -> StudyRead:
    """running -> cancelled: no trial is sampled any more; queued trials are cancelled at once and
    running ones stop at their next batch (their trials end `cancelled`). Cancelling a study that
    has ended returns it unchanged."""
    study = _get(session, owner=owner, study_id=study_id)
    conduct.cancel(session, study_id=study.id)
    return get_study(session, owner=owner, study_id=study.id)


EVENT_BATCH = 500


def study_events_after(
    session: Session, *, owner: str | None, study_id: str, after: int
) -> events.Batch | None:
    """The study's events past `after` (at most EVENT_BATCH) as one batch of its event stream;
    None when the study doesn't exist or isn't the caller's. The study's final status event is
    the last one its log ever gets."""
    if not _is_theirs(session, owner=owner, study_id=study_id):
        return None
    rows = session.execute(
        select(StudyEvent.seq, StudyEvent.kind, StudyEvent.data)
        .where(StudyEvent.study_id == study_id, StudyEvent.seq > after)
        .order_by(StudyEvent.seq)
        .limit(EVENT_BATCH)
    ).all()
    if not rows:
        return events.Batch("", after)
    seq, kind, data = rows[-1]
    return events.Batch(
        "".join(events.sse_event(kind, seq, data) for seq, kind, data in rows),
        seq,
        last=kind == "status" and data.get("status") in _ENDED,
        full=len(rows) == EVENT_BATCH,
    )


_ENDED = ("completed", "cancelled")


def _is_theirs(session: Session, *, owner: str | None, study_id: str) -> bool:
    return is_id(study_id) and (
        session.scalar(
            select(Study.id).where(Study.id == study_id, owned_by(Study.owner_id, owner))
        )
        is not None
    )


async def open_event_stream(
    make_session: events.SessionFactory, *, owner: str | None, study_id: str, after: int
) -> AsyncIterator[str]:
    """The caller's study's event stream from event `after` on (the job stream's loop: its
    pacing, keep-alives, and its end for a revoked key); a 404 (before anything is sent) when
    there is none."""

    def read(session: Session, after: int) -> events.Batch | None:
        return study_events_after(session, owner=owner, study_id=study_id, after=after)

    def exists() -> bool:
        with make_session() as session:
            return _is_theirs(session, owner=owner, study_id=study_id)

    if not await run_in_threadpool(exists):
        raise NotFound(f"study {study_id!r} not found; list yours with GET /v1/studies")
    return events.poll_stream(
        make_session, read, owner=owner, after=after, what=f"study {study_id}"
    )


def objective_curves(session: Session, *, study: StudyRead) -> dict[int, list[tuple[int, float]]]:
    """Each trial's objective after each recorded epoch (for the dashboard's overlaid curves)."""
    by_job = {t.job_id: t.number for t in study.trials}
    curves: dict[int, list[tuple[int, float]]] = {t.number: [] for t in study.trials}
    if not by_job:
        return curves
    rows = session.execute(
        select(JobMetric.job_id, JobMetric.epoch, JobMetric.values)
        .where(JobMetric.job_id.in_(list(by_job)))
        .order_by(JobMetric.job_id, JobMetric.epoch)
    )
    for job_id, epoch, values in rows:
        value = (values or {}).get(study.objective.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            curves[by_job[job_id]].append((epoch, float(value)))
    return curves
