"""The dashboard: server-rendered HTML pages, no front-end build step.

/dashboard                 jobs with their status (refreshes itself while any job is active)
/dashboard/jobs/{id}       loss, accuracy and validation curves and per-layer gradient norms,
                           drawn as inline SVG and updated live from the job's event stream
/dashboard/models/{id}     the Keras-style summary table and a predict form

Pages show only the caller's rows, through the same services and owner filter as the API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

import models
from app.api.deps import SessionDep
from app.auth import OwnerDep
from app.dashboard import pages
from app.errors import NotFound
from app.schemas import EpochMetrics
from app.services import jobs as job_service
from app.services.jobs import finite_or_none
from app.services.models import find_model
from app.tables import Dataset, JobMetric, Model

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, owner: OwnerDep) -> HTMLResponse:
    jobs = job_service.list_jobs(session, owner=owner, limit=200)
    return HTMLResponse(pages.jobs_page(jobs, root=_root(request)))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep, owner: OwnerDep) -> HTMLResponse:
    job = job_service.get_job(session, owner=owner, job_id=job_id)
    rows = session.scalars(
        select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.epoch)
    )
    history = [finite_or_none({**(row.values or {}), "epoch": row.epoch}) for row in rows]
    return HTMLResponse(pages.job_page(job, history, root=_root(request)))


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
    request: Request, model_id: str, session: SessionDep, owner: OwnerDep
) -> HTMLResponse:
    row = find_model(session, owner=owner, model_id=model_id)
    if row is None:
        raise NotFound(f"model {model_id!r} not found; see your jobs at /dashboard")
    dataset = session.get(Dataset, row.dataset_id)
    feature_names = list(dataset.feature_names) if dataset is not None else []
    return HTMLResponse(
        pages.model_page(_ModelView(row), feature_names=feature_names, root=_root(request))
    )
