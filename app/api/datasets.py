"""/v1/datasets: upload (JSON arrays or a multipart CSV / Parquet / Arrow file), list, read,
delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import intake
from app.api.deps import OwnerDep, SessionDep, SettingsDep
from app.db import checkpoint
from app.errors import Unprocessable, Unsupported
from app.limits import declares_json
from app.schemas import (
    MAX_NAME,
    UNAUTHORIZED,
    DatasetCreate,
    DatasetList,
    DatasetRead,
    ErrorResponse,
)
from app.services import datasets as service

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such dataset (or not yours)."},
}

MAX_FORM_FILES, MAX_FORM_FIELDS = 1, 10
_CSV_FORM = {
    "type": "object",
    "description": "A dataset file and up to three text fields (no others: unknown "
    f"fields, more than {MAX_FORM_FILES} file or more than {MAX_FORM_FIELDS} fields are a 422). "
    "The file is read block by block with Apache Arrow; its size is bounded by "
    "FITSERVE_MAX_UPLOAD_BYTES (by default 32 bytes per cell of FITSERVE_MAX_DATASET_CELLS, "
    "so any dataset under the cell cap fits as CSV) and its rows x columns by "
    "FITSERVE_MAX_DATASET_CELLS, checked as blocks arrive (413 at the first block past it).",
    "required": ["file", "target", "name"],
    "additionalProperties": False,
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "A UTF-8 CSV file with a header row, a gzip'd CSV, a Parquet file "
            "(numeric columns, or one list<int> column of token ids) or an Arrow IPC file; the "
            "format is read from the file's first bytes, and a file name or Content-Type that "
            "says another format is a 422.",
        },
        "target": {
            "type": "string",
            "description": "The target column's name; comma-separated for several (regression).",
            "example": "species",
        },
        "name": {
            "type": "string",
            "maxLength": MAX_NAME,
            "description": "A label.",
            "example": "iris",
        },
        "task": {
            "type": "string",
            "enum": ["classification", "regression"],
            "description": "Inferred from the target column when left out.",
        },
    },
}


def _json_body_schema() -> dict[str, Any]:
    schema = DatasetCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


@router.post(
    "",
    status_code=201,
    response_model=DatasetRead,
    summary="Upload a dataset: JSON arrays, or a CSV / Parquet / Arrow file as multipart/form-data",
    responses={
        **_ERRORS,
        413: {"model": ErrorResponse, "description": "Over the size limits."},
        415: {"model": ErrorResponse, "description": "Neither JSON nor multipart/form-data."},
        422: {"model": ErrorResponse, "description": "Data that can't be a dataset."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _json_body_schema()},
                "multipart/form-data": {"schema": _CSV_FORM},
            },
        }
    },
)
async def create_dataset(
    request: Request,
    response: Response,
    background: BackgroundTasks,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> DatasetRead:
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        row = await _from_form(request, session=session, owner=owner, settings=settings)
    elif declares_json(content_type):
        # Parsed off the event loop, a big body in a helper process (app/intake.py); its chunks
        # are handed over as they came, never joined here.
        chunks = [chunk async for chunk in request.stream()]
        name, columns, encoded = await intake.parse_json_upload(
            chunks, in_process_bytes=settings.intake_in_process_bytes
        )
        row = await run_in_threadpool(
            service.create_encoded,
            session,
            owner=owner,
            name=name,
            columns=columns,
            encoded=encoded,
            settings=settings,
        )
    else:
        raise Unsupported(
            f"Content-Type {media!r} is not accepted: send JSON (application/json) or a CSV file "
            "as multipart/form-data with fields file, target and name"
        )
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    # SQLite copies the features from its WAL into the database file once the 201 is sent
    # (app/blobs.py), not inside the request's commit
    background.add_task(checkpoint, request.app.state.engine)
    return DatasetRead.model_validate(row)


@asynccontextmanager
async def _read_form(request: Request) -> AsyncIterator[FormData]:
    """The multipart form, its files closed afterwards. A form over the limits is a 422 that
    says what the form takes (Starlette's own answer is a bare 400 "Too many fields")."""
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as exc:
        if not str(exc.detail).startswith("Too many"):
            raise
        raise Unprocessable(
            f"{exc.detail} The form takes one file (file) and the text fields target, name and "
            "task",
            loc=("body",),
        ) from None
    try:
        yield form
    finally:
        await form.close()


async def _from_form(request: Request, **kwargs: Any) -> Any:
    async with _read_form(request) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Unprocessable(
                "the form needs a file field holding the CSV (curl: -F file=@data.csv)",
                loc=("body", "file"),
            )
        fields = {}
        for key in ("target", "name", "task"):
            value = form.get(key)
            if value is not None and not isinstance(value, str):
                raise Unprocessable(f"form field {key} must be text, not a file", loc=("body", key))
            fields[key] = value
        unknown = sorted(set(form.keys()) - {"file", "target", "name", "task"})
        if unknown:
            raise Unprocessable(
                f"unknown form field(s): {', '.join(unknown)}; "
                "the form takes file, target, name and task",
                loc=("body", unknown[0]),
            )
        target, name, task = fields["target"], fields["name"], fields["task"]
        if not target:
            raise Unprocessable(
                "the form needs a target field naming the target column (e.g. -F target=species)",
                loc=("body", "target"),
            )
        if not name:
            name = (upload.filename or "").rsplit("/", 1)[-1]
            name = name.removesuffix(".gz").rsplit(".", 1)[0] if "." in name else name
        if not name or len(name) > MAX_NAME:
            raise Unprocessable(
                f"the form needs a name field of 1 to {MAX_NAME} characters", loc=("body", "name")
            )
        if task not in (None, "", "classification", "regression"):
            raise Unprocessable(
                f"task {task!r} is not known; use classification or regression (or leave it out)",
                loc=("body", "task"),
            )
        # The upload is spooled (to an unnamed temporary file past 1 MB, gone when the form is
        # closed); it is parsed from there block by block, in a thread, and refused at the
        # first block that passes the cell limit.
        await upload.seek(0)
        return await run_in_threadpool(
            service.create_from_csv,
            kwargs["session"],
            owner=kwargs["owner"],
            name=name,
            data=upload.file,
            target=target,
            task=task or None,
            settings=kwargs["settings"],
            filename=upload.filename,
            content_type=upload.content_type,
        )


@router.get(
    "", response_model=DatasetList, summary="Built-in datasets and yours", responses=_ERRORS
)
def list_datasets(session: SessionDep, owner: OwnerDep) -> DatasetList:
    rows = service.list_datasets(session, owner=owner)
    return DatasetList(items=[DatasetRead.model_validate(r) for r in rows])


@router.get("/{dataset_id}", response_model=DatasetRead, summary="One dataset", responses=_ERRORS)
def get_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> DatasetRead:
    return DatasetRead.model_validate(
        service.get_dataset(session, owner=owner, dataset_id=dataset_id)
    )


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset (409 while a queued or running job uses it)",
    responses={**_ERRORS, 409: {"model": ErrorResponse, "description": "In use, or built-in."}},
)
def delete_dataset(dataset_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    service.delete_dataset(session, owner=owner, dataset_id=dataset_id)
    return Response(status_code=204)
