"""/v1/studies: create a hyperparameter search (202 + Location), list, read, cancel."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.errors import Unprocessable
from app.schemas import UNAUTHORIZED, ErrorResponse, sse_event_schema
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


_EVENT_ID = re.compile(r"[0-9]{1,15}")  # ASCII digits only: str.isdigit() takes "²" too


_EVENT_SCHEMA = sse_event_schema(
    ["status", "trial", "epoch"], "JSON: the study's status, a trial's start or end, or an epoch."
)


@router.get(
    "/{study_id}/events",
    response_class=StreamingResponse,
    summary="Live progress as server-sent events: trials started, epochs, pruned, finished",
    description=(
        "`text/event-stream` from the study's event log: `status` (the study's: running, then "
        "completed or cancelled, which is the last event), `trial` (a trial sampled, with its "
        "params; then its end: complete with its value, pruned, failed or cancelled) and "
        "`epoch` (a trial's objective after an epoch). Event ids count the study's events "
        "1, 2, 3 ...; reconnect with `Last-Event-ID` to resume without loss or repeats."
    ),
    responses={
        200: {
            "description": "The event stream; each event as below.",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        },
        **_ERRORS,
        422: {"model": ErrorResponse, "description": "A Last-Event-ID that isn't ours."},
    },
)
async def study_events(
    study_id: str,
    request: Request,
    owner: OwnerDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=20,
            # HTTP trims a header's surrounding whitespace: the value itself is digits
            pattern=r"^[0-9]{0,15}$",
            description="Resume after this event id (the number of events already received).",
        ),
    ] = None,
) -> StreamingResponse:
    after = 0
    if last_event_id is not None and last_event_id.strip():
        if not _EVENT_ID.fullmatch(last_event_id.strip()):
            raise Unprocessable(
                f"Last-Event-ID must be an event id this stream sent (a number), got "
                f"{last_event_id[:20]!r}; omit it to start from the first event",
                loc=("header", "Last-Event-ID"),
            )
        after = int(last_event_id.strip())
    stream = await service.open_event_stream(
        request.app.state.sessionmaker, owner=owner, study_id=study_id, after=after
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
