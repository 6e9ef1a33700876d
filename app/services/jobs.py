"""Job use cases: submit (validate against the dataset, then enqueue in the request's
transaction), list, read, metrics, cancel."""

from __future__ import annotations

import math
from typing import Any

from safetensors.numpy import load as st_load
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

import models
from app.config import Settings
from app.errors import Conflict, NotFound, Unprocessable
from app.job_status import TERMINAL, JobStatus
from app.queue import store
from app.schemas import EpochMetrics, JobCreate, JobRead, MetricsRead
from app.services import is_id, owned_by, registry
from app.services.datasets import resolve_dataset
from app.tables import Dataset, Job, JobMetric, Model, StudyTrial
from models.memory import step_memory
from models.spec import format_count
from models.tokens import TokenLists, inputs_from_bytes
from models.training_spec import validation_class_warning


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: a diverged epoch's loss is shown as null rather than failing the read."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def metrics_view(row: JobMetric | None) -> EpochMetrics | None:
    if row is None:
        return None
    values = finite_or_none(dict(row.values or {}))
    values["epoch"] = row.epoch
    # what the epoch's steps ran as, recorded beside its values by the worker (a model's final
    # metrics, shaped like a row by app/services/models.py, carry the values alone)
    for column in ("step_mode", "step_mode_reason", "precision"):
        values[column] = getattr(row, column, None)
    return EpochMetrics.model_validate(values)


def job_view(job: Job, latest: JobMetric | None) -> JobRead:
    read = JobRead.model_validate(job)
    read.metrics = metrics_view(latest)
    return read


def _params_message(count: int, limit: int) -> str:
    return (
        f"the network would have {format_count(count)} parameters; "
        f"the limit is {format_count(limit)} "
        "(FITSERVE_MAX_PARAMS): use fewer or narrower layers"
    )


def check_params(
    network: models.NetworkSpec, settings: Settings, *, loc: tuple[str | int, ...] = ("body",)
) -> None:
    count = models.count_params(network)
    if count > settings.max_params:
        raise Unprocessable(_params_message(count, settings.max_params), loc=(*loc, "network"))


def _bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def check_activation_memory(
    network: models.NetworkSpec,
    training: models.TrainingConfig,
    *,
    rows: int,
    settings: Settings,
    loc: tuple[str | int, ...] = ("body",),
) -> None:
    """422 when one training step's activations (models/memory.py's estimate) pass
    FITSERVE_MAX_ACTIVATION_BYTES, saying what to shrink: batch_size, or the widest layer."""
    step = step_memory(network, training, rows=rows)
    limit = settings.max_activation_bytes
    if step.bytes <= limit:
        return
    widest = (
        f"the input ({step.widest:,} wide: fewer features, or a smaller num_tokens)"
        if step.widest_layer is None
        else f"network.layers[{step.widest_layer}] ({step.widest:,} units)"
    )
    fits = limit // step.bytes_per_row
    fix = (
        f"lower batch_size to at most {fits:,}, or narrow {widest}"
        if fits >= 1
        else f"narrow {widest}: even one row per step is over the limit"
    )
    batch = training.batch_size
    shown = f'"full" ({step.batch:,} training rows)' if batch == "full" else f"{step.batch:,}"
    raise Unprocessable(
        f"one training step would hold about {_bytes(step.bytes)} of activations (batch_size "
        f"{shown} x {_bytes(step.bytes_per_row)} a row, forward and backward; the widest tensor "
        f"is {step.widest:,} wide); the limit is {_bytes(limit)} "
        f"(FITSERVE_MAX_ACTIVATION_BYTES): {fix}",
        loc=(*loc, "training", "batch_size"),
        code="activation_memory",
    )


def check_trainable(
    network: models.NetworkSpec,
    training: models.TrainingConfig,
    *,
    dataset: Any,
    settings: Settings,
    loc: tuple[str | int, ...] = ("body",),
) -> None:
    """422 unless the spec fits the parameter and activation-memory budgets and can train on
    the dataset."""
    check_params(network, settings, loc=loc)
    try:
        models.check_compatible(
            network,
            training,
            task=dataset.task,
            n_features=dataset.n_features if dataset.tokens is None else None,
            n_outputs=dataset.n_outputs,
            n_classes=len(dataset.classes) if dataset.classes is not None else None,
            rows=dataset.rows,
        )
        check_token_ids(dataset, network)
    except models.SpecError as exc:
        raise Unprocessable.from_spec_error(
            exc, under=loc, message=f"{exc.message} ({_dataset_text(dataset)})"
        ) from None
    check_activation_memory(network, training, rows=dataset.rows, settings=settings, loc=loc)
    check_time_budget(training, settings=settings, loc=loc)


def check_time_budget(
    training: models.TrainingConfig, *, settings: Settings, loc: tuple[str | int, ...] = ("body",)
) -> None:
    """422 for a training.max_seconds over the server's job time limit, which would never apply."""
    budget, limit = training.max_seconds, settings.max_job_seconds
    if budget is not None and limit is not None and budget > limit:
        raise Unprocessable(
            f"training.max_seconds is {budget:,.0f} s; this server stops every job after "
            f"{limit:,.0f} s (FITSERVE_MAX_JOB_SECONDS): ask for at most {limit:,.0f}",
            loc=(*loc, "training", "max_seconds"),
        )


def new_job(
    *,
    owner: str | None,
    name: str | None,
    dataset_id: str,
    network: models.NetworkSpec,
    training: models.TrainingConfig,
    settings: Settings,
    warning: str | None = None,
    register_as: str | None = None,
) -> Job:
    """The row of a queued job (not yet added to the session)."""
    return Job(
        owner_id=owner,
        name=name,
        register_as=register_as,
        warning=warning,
        dataset_id=dataset_id,
        network=network.model_dump(mode="json", exclude_none=True),
        training=training.model_dump(mode="json", exclude_none=True),
        status=JobStatus.QUEUED,
        epochs=training.epochs,
        epoch=0,
        attempts=0,
        max_attempts=settings.max_attempts,
    )


def submit_job(
    session: Session, *, owner: str | None, body: JobCreate, settings: Settings
) -> JobRead:
    dataset = resolve_dataset(session, owner=owner, ref=body.dataset)
    check_trainable(body.network, body.training, dataset=dataset, settings=settings)
    queued = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(owned_by(Job.owner_id, owner), Job.status == JobStatus.QUEUED)
    )
    if queued is not None and queued >= settings.max_queued_jobs_per_key:
        raise Conflict(
            f"you have {queued} queued jobs, the limit is {settings.max_queued_jobs_per_key} "
            "(FITSERVE_MAX_QUEUED_JOBS_PER_KEY): wait for some to start or cancel them",
            code="too_many_queued",
        )
    if body.register_as is not None:
        registry.check_name(body.register_as, loc=("body", "register_as"))
    job = new_job(
        owner=owner,
        name=body.name,
        register_as=body.register_as,
        dataset_id=dataset.id,
        network=body.network,
        training=body.training,
        settings=settings,
        warning=_validation_warning(dataset, body.training.validation_split),
    )
    store.enqueue_job(session, job=job)
    session.refresh(job)
    return job_view(job, None)


def check_token_ids(dataset: Dataset, network: models.NetworkSpec) -> None:
    """A sequences dataset's ids against the network's category_encoding: the stored largest id
    decides without reading the arrays; only a dataset that fails (or a one_hot layer, which needs
    the lengths) is decoded, to name the row."""
    encoding = network.encoding
    if dataset.tokens is None or encoding is None:
        return
    assert dataset.max_token_id is not None  # set with tokens
    if dataset.max_token_id < encoding.num_tokens and encoding.output_mode != "one_hot":
        return
    tokens = inputs_from_bytes(dataset.features)
    assert isinstance(tokens, TokenLists)
    try:
        tokens.check_for(encoding, loc="dataset")
    except models.SpecError as exc:
        raise models.SpecError(
            f"{exc.message.replace('row', 'dataset row', 1)}", loc=("network", "layers", 0)
        ) from None


def _dataset_text(dataset: Dataset) -> str:
    inputs = (
        f"{dataset.tokens:,} token ids up to {dataset.max_token_id}"
        if dataset.tokens is not None
        else f"{dataset.n_features} features"
    )
    return f"dataset {dataset.name!r}: {dataset.rows} rows, {inputs}, {_target_text(dataset)}"


def _validation_warning(dataset: Dataset, validation_split: float) -> str | None:
    if dataset.task != "classification" or validation_split <= 0 or dataset.classes is None:
        return None
    y = st_load(bytes(dataset.targets))["y"]  # the labels only: features may be large
    return validation_class_warning(y.tolist(), validation_split, dataset.classes)


def _target_text(dataset: Any) -> str:
    if dataset.task == "classification":
        return f"{len(dataset.classes or [])} classes"
    return f"{dataset.n_outputs} target column(s)"


def _get(session: Session, *, owner: str | None, job_id: str) -> Job:
    job = None
    if is_id(job_id):
        job = session.scalar(select(Job).where(Job.id == job_id, owned_by(Job.owner_id, owner)))
    if job is None:
        raise NotFound(f"job {job_id!r} not found; list yours with GET /v1/jobs")
    return job


def _latest(session: Session, job: Job) -> JobMetric | None:
    if job.epoch <= 0:
        return None
    return session.get(JobMetric, (job.id, job.epoch))


def get_job(session: Session, *, owner: str | None, job_id: str) -> JobRead:
    job = _get(session, owner=owner, job_id=job_id)
    return job_view(job, _latest(session, job))


def list_jobs(
    session: Session,
    *,
    owner: str | None,
    status: JobStatus | None = None,
    dataset_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[JobRead]:
    # The latest metrics row is the one for the job's progress epoch: one outer join, no N+1.
    query = (
        select(Job, JobMetric)
        .outerjoin(JobMetric, and_(JobMetric.job_id == Job.id, JobMetric.epoch == Job.epoch))
        .where(owned_by(Job.owner_id, owner))
    )
    if status is not None:
        query = query.where(Job.status == status)
    if dataset_id is not None:
        query = query.where(Job.dataset_id == dataset_id)
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    return [job_view(job, metric) for job, metric in session.execute(query)]


# Epochs per page of GET /v1/jobs/{id}/metrics: by default (a row of a 100-layer network is
# ~1.7 kB: ~0.9 MB a page), and at most.
METRICS_PAGE = 500
MAX_METRICS_PAGE = 5000


def get_metrics(
    session: Session,
    *,
    owner: str | None,
    job_id: str,
    after: int = 0,
    limit: int = METRICS_PAGE,
) -> MetricsRead:
    """The job's epochs after `after` (an epoch number: the keyset, so pages stay exact while
    the job adds epochs), at most `limit`; `next_after` is set when more follow."""
    job = _get(session, owner=owner, job_id=job_id)
    rows = list(
        session.scalars(
            select(JobMetric)
            .where(JobMetric.job_id == job.id, JobMetric.epoch > after)
            .order_by(JobMetric.epoch)
            .limit(limit + 1)  # one more than the page: is there a next one?
        )
    )
    page = rows[:limit]
    more = len(rows) > limit
    return MetricsRead(
        epochs=[m for m in (metrics_view(r) for r in page) if m is not None],
        next_after=page[-1].epoch if more else None,
    )


# Epochs a chart of one job's curve holds at most (plus its last and its lowest-loss epoch): a
# 640-pixel chart draws no more, and six compared 100,000-epoch jobs stay ~0.5 MB of page.
CURVE_POINTS = 500


def get_curve(
    session: Session, *, owner: str | None, job_id: str, points: int = CURVE_POINTS
) -> list[EpochMetrics]:
    """The job's epochs thinned in SQL for a chart, however many it ran: epoch 1 and every
    `stride`-th after it (the smallest stride that keeps at most `points` of them), plus the
    last epoch and the one with the lowest loss, so the curve ends where the job is and its
    best shows; at most `points` + 2 rows, in epoch order."""
    job = _get(session, owner=owner, job_id=job_id)
    mine = JobMetric.job_id == job.id
    last = session.scalar(select(func.max(JobMetric.epoch)).where(mine))
    if last is None:
        return []
    stride = max(1, math.ceil(last / points))
    best = (
        select(JobMetric.epoch)
        .where(mine, JobMetric.loss.is_not(None))
        .order_by(JobMetric.loss, JobMetric.epoch)
        .limit(1)
        .scalar_subquery()
    )
    kept = or_(
        (JobMetric.epoch - 1) % stride == 0, JobMetric.epoch == last, JobMetric.epoch == best
    )
    rows = session.scalars(select(JobMetric).where(mine, kept).order_by(JobMetric.epoch))
    return [m for m in (metrics_view(r) for r in rows) if m is not None]


def cancel_job(session: Session, *, owner: str | None, job_id: str) -> JobRead:
    """queued -> cancelled at once; running -> cancelling (the worker stops at its next batch);
    a job already cancelled or cancelling is returned unchanged; a job that succeeded or failed
    is a conflict."""
    job = _get(session, owner=owner, job_id=job_id)
    try:
        job = store.cancel_job(session, job_id=job.id)
    except store.JobConflict as exc:
        raise Conflict(str(exc), code="job_finished") from None
    return job_view(job, _latest(session, job))


def delete_job(session: Session, *, owner: str | None, job_id: str) -> None:
    """A finished job and everything it wrote (metrics, checkpoint, claims). 409 while it is
    queued or running, while its model exists (delete the model first), or when it is a study's
    trial (the study keeps it)."""
    job = _get(session, owner=owner, job_id=job_id)
    if job.status not in TERMINAL:
        raise Conflict(
            f"job {job.id} is {job.status}; cancel it (POST /v1/jobs/{job.id}/cancel) and delete "
            "it once it has stopped",
            code="job_running",
        )
    trial = session.execute(
        select(StudyTrial.number, StudyTrial.study_id).where(StudyTrial.job_id == job.id)
    ).first()
    if trial is not None:
        raise Conflict(
            f"job {job.id} is trial {trial.number} of study {trial.study_id}, which keeps its "
            "trials' jobs (their params, metrics and curves); it is not deleted on its own",
            code="job_in_study",
        )
    model_id = session.scalar(select(Model.id).where(Model.job_id == job.id))
    if model_id is not None:
        raise Conflict(
            f"job {job.id} trained model {model_id}, which still exists; delete the model first "
            f"(DELETE /v1/models/{model_id})",
            code="job_has_model",
        )
    store.delete_job_rows(session, job_id=job.id)
