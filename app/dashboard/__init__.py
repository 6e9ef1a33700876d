"""The dashboard: server-rendered HTML pages, no front-end build step.

/dashboard                 jobs with their status (refreshes itself while any job is active)
/dashboard/jobs/{id}       loss, accuracy and validation curves and per-layer gradient norms,
                           drawn as inline SVG and updated live from the job's event stream
/dashboard/models/{id}     the Keras-style summary table, the names it is registered as (and a
                           form to register it under one), a predict form
/dashboard/names           the key's model names: each one's versions (model, job, final
                           metric) and aliases, with buttons and a form that move an alias
/dashboard/names/{name}    one model name, the same way
/dashboard/compare?job=..  the loss and accuracy/MAE curves of the picked jobs overlaid, each
                           thinned to CURVE_POINTS + 2 epochs at most, its last and best among
                           them (app/services/jobs.py: get_curve)
/dashboard/studies         studies with their progress and best objective
/dashboard/studies/{id}    every trial's objective curve overlaid, the objective against each
                           searched parameter, the best trial marked (reloads while running)

Pages show only the caller's rows, through the same services and owner filter as the API.
Where keys are required, a page requested without one (a browser's navigation can't carry an
Authorization header) answers 401 with a sign-in form and no data; its script keeps the key in
the tab's sessionStorage and fetches the page again with 'Authorization: Bearer <key>'
(app/dashboard/auth.js). A key that is sent is checked like the API's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

import models
from app.api.deps import ModelCacheDep, SessionDep
from app.auth import owner_for
from app.config import Settings
from app.dashboard import name_pages, pages, study_pages
from app.errors import NotFound, Unprocessable
from app.schemas import EpochMetrics, MetricsRead, RegisteredModelRead
from app.services import jobs as job_service
from app.services import predict, registry
from app.services import studies as study_service
from app.services.jobs import finite_or_none
from app.services.models import find_model
from app.tables import Job, Model

router = APIRouter(prefix="/dashboard", include_in_schema=False)


class SignInRequired(Exception):
    """A page was asked for without a key where keys are required."""


async def dashboard_owner(request: Request) -> str | None:
    """`OwnerDep` for pages: no key where one is required is a sign-in, not a JSON 401."""
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization")
    if header is None and settings.api_keys_required:
        raise SignInRequired
    state = request.app.state
    return await owner_for(header, settings, state.engine, state.verified_keys)


DashboardOwnerDep = Annotated[str | None, Depends(dashboard_owner)]


def sign_in_response(request: Request, exc: Exception) -> HTMLResponse:
    """The sign-in form, for app.add_exception_handler(SignInRequired, ...)."""
    return HTMLResponse(
        pages.sign_in_page(root=_root(request)),
        status_code=401,
        headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
    )


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, owner: DashboardOwnerDep) -> HTMLResponse:
    jobs = job_service.list_jobs(session, owner=owner, limit=200)
    return HTMLResponse(pages.jobs_page(jobs, root=_root(request)))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: str, session: SessionDep, owner: DashboardOwnerDep
) -> HTMLResponse:
    job = job_service.get_job(session, owner=owner, job_id=job_id)
    # The first page of epochs is in the page; its script reads the rest from
    # GET /v1/jobs/{id}/metrics, page by page, then follows the event stream.
    page = job_service.get_metrics(session, owner=owner, job_id=job.id)
    return HTMLResponse(
        pages.job_page(job, _rows(page), next_after=page.next_after, root=_root(request))
    )


def _rows(page: MetricsRead) -> list[dict[str, Any]]:
    return [row.model_dump(mode="json", exclude_none=True) for row in page.epochs]


def _curve(session: Session, owner: str | None, job_id: str) -> list[dict[str, Any]]:
    """What the compare view draws of a job: its curve thinned to at most CURVE_POINTS + 2
    epochs (job_service.get_curve), each with its epoch and the figures the charts and table
    show (no per-layer gradient norms: ~1.7 kB an epoch for a 100-layer network)."""
    curve = job_service.get_curve(session, owner=owner, job_id=job_id)
    return [
        row.model_dump(mode="json", include=pages.CURVE_FIELDS, exclude_none=True) for row in curve
    ]


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    session: SessionDep,
    owner: DashboardOwnerDep,
    job: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies query defaults)
) -> HTMLResponse:
    picked = list(dict.fromkeys(job))  # each job once, in the order picked
    if not 1 <= len(picked) <= pages.MAX_COMPARE:
        raise Unprocessable(
            f"pick between 1 and {pages.MAX_COMPARE} jobs to compare (got {len(picked)}): "
            "tick them on /dashboard",
            loc=("query", "job"),
        )
    jobs = [job_service.get_job(session, owner=owner, job_id=job_id) for job_id in picked]
    return HTMLResponse(
        pages.compare_page([(j, _curve(session, owner, j.id)) for j in jobs], root=_root(request))
    )


class _ModelView:
    """What the model page shows, from the row (the summary recomputed from the stored spec)."""

    def __init__(self, row: Model) -> None:
        self.id, self.job_id, self.task, self.classes = row.id, row.job_id, row.task, row.classes
        self.summary = models.summary(row.network)
        self.metrics: Any = None
        if row.metrics:
            self.metrics = EpochMetrics.model_validate(finite_or_none(row.metrics))


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(
    request: Request,
    model_id: str,
    session: SessionDep,
    owner: DashboardOwnerDep,
    cache: ModelCacheDep,
) -> HTMLResponse:
    row = find_model(session, owner=owner, model_id=model_id)
    if row is None:
        raise NotFound(f"model {model_id!r} not found; see your jobs at /dashboard")
    # the model the page's predict form will call, loaded (so its first prediction is a hit)
    served = predict.get_model(session, cache=cache, owner=owner, model_id=model_id)
    names = registry.names_of(session, owner=owner, model_id=row.id)
    page = pages.model_page(
        _ModelView(row), feature_names=served.feature_names, names=names, root=_root(request)
    )
    return HTMLResponse(page)


def _version_details(
    session: Session, names: list[RegisteredModelRead]
) -> dict[str, name_pages.VersionDetail]:
    """Model id -> its job and final metrics, for every version of `names` (one query)."""
    ids = {v.model_id for name in names for v in name.versions}
    if not ids:
        return {}
    rows = session.execute(
        select(Model.id, Model.job_id, Model.metrics, Job.name)
        .outerjoin(Job, Job.id == Model.job_id)
        .where(Model.id.in_(ids))
    )
    return {
        model_id: name_pages.VersionDetail(job_id, job_name, finite_or_none(metrics or {}))
        for model_id, job_id, metrics, job_name in rows
    }


@router.get("/names", response_class=HTMLResponse)
def names_page(request: Request, session: SessionDep, owner: DashboardOwnerDep) -> HTMLResponse:
    names = [registry.view(session, r) for r in registry.list_names(session, owner=owner)]
    served = {name.name: registry.served_version(name) for name in names}
    details = _version_details(session, names)
    return HTMLResponse(name_pages.names_page(names, details, served, root=_root(request)))


@router.get("/names/{name}", response_class=HTMLResponse)
def name_page(
    request: Request, name: str, session: SessionDep, owner: DashboardOwnerDep
) -> HTMLResponse:
    view = registry.view(session, registry.get(session, owner=owner, name=name))
    details = _version_details(session, [view])
    page = name_pages.name_page(view, details, registry.served_version(view), root=_root(request))
    return HTMLResponse(page)


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, session: SessionDep, owner: DashboardOwnerDep) -> HTMLResponse:
    studies = study_service.list_studies(session, owner=owner, limit=200)
    return HTMLResponse(study_pages.studies_page(studies, root=_root(request)))


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(
    request: Request, study_id: str, session: SessionDep, owner: DashboardOwnerDep
) -> HTMLResponse:
    study = study_service.get_study(session, owner=owner, study_id=study_id)
    curves = study_service.objective_curves(session, study=study)
    return HTMLResponse(study_pages.study_page(study, curves, root=_root(request)))
