"""/v1/studies: create a hyperparameter search (202 + Location), list, read, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import SessionDep, SettingsDep
from app.auth import OwnerDep
from app.schemas import UNAUTHORIZED, ErrorResponse
from app.services import studies as service
from app.studies.schemas import StudyCreate, StudyList, StudyRead

router = APIRouter(prefix="/v1/studies", tags=["studies"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such study (or not yours)."},
}


@router.post(
    "",
    status_code=202,
    response_model=StudyRead,
    summary="Start a hyperparameter search; its trials run as jobs on the shared queue",
    responses={
        401: _ERRORS[401],
        422: {
            "model": ErrorResponse,
            "description": "A search space, objective or spec that can't work on the dataset.",
        },
    },
)
def create_study(
    body: StudyCreate,
    response: Response,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> StudyRead:
    study = service.create_study(session, owner=owner, body=body, settings=settings)
    response.headers["Location"] = f"/v1/studies/{study.id}"
    return study


@router.get(
    "",
    response_model=StudyList,
    summary="Your studies, newest first",
    responses={401: _ERRORS[401]},
)
def list_studies(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Skip this many.")] = 0,
) -> StudyList:
    return StudyList(items=service.list_studies(session, owner=owner, limit=limit, offset=offset))


@router.get(
    "/{study_id}",
    response_model=StudyRead,
    summary="A study: its trials with params, objective values and states; the best trial",
    responses=_ERRORS,
)
def get_study(study_id: str, session: SessionDep, owner: OwnerDep) -> StudyRead:
    return service.get_study(session, owner=owner, study_id=study_id)


@router.post(
    "/{study_id}/cancel",
    status_code=202,
    response_model=StudyRead,
    summary="Stop sampling; cancel queued trials and stop running ones at their next batch",
    responses=_ERRORS,
)
def cancel_study(study_id: str, session: SessionDep, owner: OwnerDep) -> StudyRead:
    return service.cancel_study(session, owner=owner, study_id=study_id)
