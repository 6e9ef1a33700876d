"""/v1/jobs: submit (202 + Location), list, read, metrics, live events, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.job_status import JobStatus
from app.schemas import (
    UNAUTHORIZED,
    ErrorResponse,
    JobCreate,
    JobList,
    JobRead,
    MetricsRead,
    sse_event_schema,
)
from app.services import events
from app.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such job (or not yours)."},
}


@router.post(
    "",
    status_code=202,
    response_model=JobRead,
    summary="Queue a training job; poll the Location it returns",
    responses={
        401: _ERRORS[401],
        409: {"model": ErrorResponse, "description": "Too many queued jobs."},
        422: {"model": ErrorResponse, "description": "A spec that can't train on the dataset."},
    },
)
def submit_job(
    body: JobCreate, response: Response, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> JobRead:
    job = service.submit_job(session, owner=owner, body=body, settings=settings)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get(
    "", response_model=JobList, summary="Your jobs, newest first", responses={401: _ERRORS[401]}
)
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    dataset_id: Annotated[
        str | None, Query(max_length=32, description="Only jobs on this dataset.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Skip this many.")] = 0,
) -> JobList:
    items = service.list_jobs(
        session, owner=owner, status=status, dataset_id=dataset_id, limit=limit, offset=offset
    )
    return JobList(items=items)


@router.get(
    "/{job_id}",
    response_model=JobRead,
    summary="A job's state and latest metrics",
    responses=_ERRORS,
)
def get_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobRead:
    return service.get_job(session, owner=owner, job_id=job_id)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsRead,
    summary="One metrics row per finished epoch, in order, a page at a time",
    description=(
        f"Pages of at most `limit` epochs (default {service.METRICS_PAGE}, at most "
        f"{service.MAX_METRICS_PAGE}), after the epoch `after`. While more follow, the body's "
        '`next_after` is the next page\'s `after` and a `Link: <...>; rel="next"` header (RFC '
        "8288) holds its URL; on the last page `next_after` is null and there is no Link."
    ),
    responses={
        **_ERRORS,
        200: {
            "description": "A page of epochs.",
            "headers": {
                "Link": {
                    "description": 'The next page, as <url>; rel="next", while more follow.',
                    "schema": {"type": "string"},
                }
            },
        },
    },
)
def get_metrics(
    job_id: str,
    request: Request,
    response: Response,
    session: SessionDep,
    owner: OwnerDep,
    after: Annotated[
        int,
        Query(
            ge=0,
            le=1_000_000,
            description="Only epochs after this epoch (the cursor; 0: from the first).",
        ),
    ] = 0,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=service.MAX_METRICS_PAGE,
            description=f"Epochs per page (default {service.METRICS_PAGE}).",
        ),
    ] = service.METRICS_PAGE,
) -> MetricsRead:
    page = service.get_metrics(session, owner=owner, job_id=job_id, after=after, limit=limit)
    if page.next_after is not None:
        # a reference relative to this host (the Host header is the client's to choose)
        root = request.scope.get("root_path", "")
        url = f"{root}/v1/jobs/{job_id}/metrics?after={page.next_after}&limit={limit}"
        response.headers["Link"] = f'<{url}>; rel="next"'
    return page


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobRead,
    summary="Cancel a queued job now, or ask a running one to stop at its next batch",
    responses={**_ERRORS, 409: {"model": ErrorResponse, "description": "Already finished."}},
)
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobRead:
    return service.cancel_job(session, owner=owner, job_id=job_id)


_EVENT_SCHEMA = sse_event_schema(
    ["epoch", "status"], "JSON: the metrics row (epoch) or the job's status fields (status)."
)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Live progress as server-sent events (epochs and status changes)",
    description=(
        "`text/event-stream`: an `epoch` event per finished epoch (data: the metrics row) and a "
        "`status` event per status change; the last event carries the terminal status. Each "
        "event's id is the number of epochs delivered; reconnect with `Last-Event-ID` to resume "
        "without loss or repeats. Keep-alive comments every 15 s."
    ),
    responses={
        200: {
            "description": "The event stream; each event as below.",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        },
        **UNAUTHORIZED,
        404: {"model": ErrorResponse, "description": "No such job (or not yours)."},
        422: {"model": ErrorResponse, "description": "A Last-Event-ID that isn't ours."},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    owner: OwnerDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=20,
            json_schema_extra={"pattern": "^[0-9]{0,8}$"},
            description="Resume after this event id (the number of epochs already received).",
        ),
    ] = None,
    after_query: Annotated[
        int | None,
        Query(
            alias="last_event_id",
            ge=0,
            le=10_000_000,
            description="The same for EventSource's first connection, which can't send headers "
            "(the header wins when both are sent).",
        ),
    ] = None,
) -> StreamingResponse:
    after = events.resume_after(last_event_id, after_query)
    stream = await events.open_stream(
        request.app.state.sessionmaker, owner=owner, job_id=job_id, after=after
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        # No caching, and no buffering in front of us (nginx honours X-Accel-Buffering).
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job with its metrics and checkpoint (its model deleted first)",
    responses={
        **_ERRORS,
        409: {
            "model": ErrorResponse,
            "description": "Queued or running, its model exists, or it is a study's trial.",
        },
    },
)
def delete_job(job_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    service.delete_job(session, owner=owner, job_id=job_id)
    return Response(status_code=204)
