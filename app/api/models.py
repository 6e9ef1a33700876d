"""/v1/models: list, read, weights, predict (JSON and CSV), Keras JSON and ONNX downloads.

`POST /v1/models/{id}/predict` is fast itself: async, its body read once (orjson into
a numpy array) and, for a cached model and a small request, answered on the event loop without
a query or a thread hop. Larger requests and cache misses go to the thread pool.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import ModelCacheDep, OwnerDep, SessionDep, current_owner
from app.api.direct_route import DirectRoute
from app.api.request_body import RequestBody
from app.config import Settings
from app.errors import Unprocessable, Unsupported
from app.inference import ServedModel
from app.limits import INT_LIMIT, check_body, declares_json, request_headers
from app.schemas import (
    MODEL_REF_DOC,
    UNAUTHORIZED,
    ErrorResponse,
    ModelList,
    ModelRead,
    PredictRequest,
    PredictResponse,
)
from app.services import batch
from app.services import models as service
from app.services import predict as prediction
from models.tokens import TokenLists

router = APIRouter(prefix="/v1/models")
ModelRef = Annotated[str, Path(description=MODEL_REF_DOC)]
MODELS: list[str | Any] = ["models"]
INTEROP: list[str | Any] = ["interop"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    **UNAUTHORIZED,
    404: {"model": ErrorResponse, "description": "No such model (or not yours)."},
}
# Multiply-adds (parameters x rows) below which a prediction runs on the event loop: under ~1 M
# a forward pass takes less than the hop to a worker thread would.
_INLINE_WORK = 1 << 20
# Bodies past this are parsed in the thread pool: orjson and numpy take ~1 ms per 64 KiB of rows,
# which the event loop (every other request) would otherwise wait for.
_INLINE_BODY_BYTES = 64 * 1024
# predict.csv bodies parsed at once, each in a thread that waits for its body as it arrives: a
# limiter of their own (app.state.csv_parsers, made in the lifespan), apart from the shared thread
# pool, so clients that send slowly can't hold the threads every other request needs (nor all of
# Arrow's 8 I/O threads, which read their bodies)
CSV_PARSERS = 4


@router.get(
    "",
    tags=MODELS,
    response_model=ModelList,
    summary="Your models, newest first",
    responses={401: _ERRORS[401]},
)
def list_models(
    session: SessionDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Skip this many.")] = 0,
) -> ModelList:
    return service.list_models(session, owner=owner, limit=limit, offset=offset)


@router.get(
    "/{model_id}",
    tags=MODELS,
    response_model=ModelRead,
    summary="A model's spec, summary, final metrics, classes and standardization",
    responses=_ERRORS,
)
def get_model(
    model_id: ModelRef, session: SessionDep, owner: OwnerDep, cache: ModelCacheDep
) -> ModelRead:
    return service.get_model(session, owner=owner, model_id=model_id, cache=cache)


@router.get(
    "/{model_id}/weights",
    tags=MODELS,
    summary="The trained weights as a safetensors file (spec and standardization in its metadata)",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "safetensors bytes.",
        },
    },
)
def get_weights(model_id: ModelRef, session: SessionDep, owner: OwnerDep) -> Response:
    data = service.get_weights(session, owner=owner, model_id=model_id)
    return Response(
        content=data,
        media_type="application/octet-stream",
        # an id is hex, and a name reference got here only by matching the name, version and
        # alias patterns (a-z 0-9 . _ - @): the file name carries no quote, slash or space
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.safetensors"'},
    )


async def predict(model_id: ModelRef, request: Request) -> Response:
    # No dependencies of its own, so FastAPI has nothing to solve and DirectRoute calls it
    # directly (those of an enclosing router still run): OwnerDep's check (usually made by
    # app.access before the body was read) and ModelCacheDep's read, inline.
    state = request.app.state
    owner = await current_owner(request)
    body, content_type = await read_body(request), _content_type(request)
    if len(body) <= _INLINE_BODY_BYTES:
        rows = read_rows(body, content_type, state.settings)
    else:
        rows = await run_in_threadpool(read_rows, body, content_type, state.settings)
    model = await prediction.get_model_async(
        state.sessionmaker, cache=state.model_cache, owner=owner, model_id=model_id
    )
    if model.predictor.n_parameters * len(rows) < _INLINE_WORK:
        content = _predict_json(model, rows)
    else:
        content = await run_in_threadpool(_predict_json, model, rows)
    return Response(content=content, media_type="application/json")


def _content_type(request: Request) -> str | None:
    # read from the scope: request.headers builds a Headers object to look up one name
    value = request_headers(request.scope).get(b"content-type")
    return None if value is None else value.decode("latin-1")


def _predict_json(model: ServedModel, rows: np.ndarray | list[list[float]]) -> bytes:
    # JSON bytes straight from the output arrays: PredictResponse's schema, without building a
    # model of Python floats and validating it again on the way out
    outputs, labels = prediction.predict(model, rows)
    return prediction.encode_predictions(outputs, labels)


def read_rows(
    body: bytes, content_type: str | None, settings: Settings
) -> np.ndarray | list[list[float]]:
    """`read_inputs` within FITSERVE_MAX_PREDICT_ROWS: the rows are counted before the body is
    parsed, and again after."""
    counted = count_rows(body)
    if counted > settings.max_predict_rows:
        check_body(body, content_type)  # a bad value's 422 comes first, as for any JSON body
        prediction.check_rows(counted, settings)
    rows = read_inputs(body, content_type)
    prediction.check_rows(len(rows), settings)
    return rows


def count_rows(body: bytes) -> int:
    """The rows a PredictRequest body holds, counted without parsing it (one C-speed pass, ~4 ms
    per 10 MB). The only field is a list of lists of numbers, so each `[` after the first opens
    a row; a body where that is not so is refused when parsed (422), and one that would pass
    the row limit only by such extra brackets gets the 413 instead."""
    brackets = np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord("["))  # 4x count()
    return max(0, int(brackets) - 1)


async def read_body(request: Request) -> bytes:
    """The request's body, as `request.body()` but without copying a body that arrives in one
    piece (as app.limits hands on a JSON body): Starlette joins it with the empty end-of-body
    chunk, ~2 ms per MB on the event loop."""
    chunks = [chunk async for chunk in request.stream() if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


router.add_api_route(
    "/{model_id}/predict",
    predict,
    methods=["POST"],
    # Called directly while no dependency applies to it (app/api/direct_route.py)
    route_class_override=DirectRoute,
    tags=MODELS,
    response_model=PredictResponse,
    summary="Outputs (and class labels) for rows of features; dropout is off",
    # The body is read by the route itself (read_inputs), not by FastAPI: declared here, and
    # its schema added to the components by document_predict_body.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
            },
        }
    },
    responses={
        **_ERRORS,
        413: {"model": ErrorResponse, "description": "Too many rows."},
        422: {"model": ErrorResponse, "description": "Rows of the wrong width."},
    },
)
# Tried first: FastAPI matches a request against a router's routes in order, twice a request
# (bench/RESULTS.md), and this is the route called thousands of times a second. No other path of
# the router matches /{model_id}/predict; the OpenAPI document lists it first among them.
router.routes.insert(0, router.routes.pop())


def document_predict_body(app: FastAPI) -> None:
    """Put PredictRequest, which the predict route's openapi_extra refers to, in the OpenAPI
    document's components (FastAPI adds only the models of parameters it parses itself)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            "PredictRequest",
            PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def read_inputs(body: bytes, content_type: str | None) -> np.ndarray | list[list[float]]:
    """PredictRequest's rows from the raw body, parsed once.

    The common body — JSON `{"inputs": [[numbers]]}`, rows of one width — goes from orjson
    straight into a float64 array: orjson refuses NaN, Infinity, numbers beyond float64 and lone
    surrogates, so what it parses needs no other check (app.limits leaves this route's body to
    it). Anything else is checked as app.limits checks a JSON body (`check_body`), then parsed
    and validated exactly as FastAPI parses a `PredictRequest` body parameter, so every error is
    the one the middleware or FastAPI would give.
    """
    # Numbers under "inputs" hold no "r" and no "a"; true and false do (each a memchr pass, where
    # searching for the two words took ~0.7 ms per 660 KB). A bool would be read as 0 or 1.
    if body and declares_json(content_type) and b"r" not in body and b"a" not in body:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = None
        inputs = value.get("inputs") if type(value) is dict and len(value) == 1 else None
        if type(inputs) is list and inputs:
            try:
                x = np.array(inputs)
            except ValueError:  # ragged rows
                x = None
            # bools were ruled out above; strings, nulls and objects make other dtypes
            if x is not None and x.ndim == 2 and x.dtype.kind in "fi":
                x = x.astype(np.float64, copy=False)
                # orjson reads an integer of INT_LIMIT or more as a float, app.limits as a
                # number beyond float64: its 422 for such a body, as before
                if np.abs(x).max(initial=0.0) < INT_LIMIT:
                    return x
    check_body(body, content_type)
    return _validated(body, content_type).inputs


def _validated(body: bytes, content_type: str | None) -> PredictRequest:
    """The body as FastAPI validates a PredictRequest parameter (same errors, same order)."""
    value: Any = None
    if body:
        value = body
        if declares_json(content_type):
            try:
                value = json.loads(body)
            except json.JSONDecodeError as e:
                raise RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body", e.pos),
                            "msg": "JSON decode error",
                            "input": {},
                            "ctx": {"error": e.msg},
                        }
                    ],
                    body=e.doc,
                ) from e
            except Exception as e:
                raise HTTPException(400, "There was an error parsing the body") from e
    if value is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return PredictRequest.model_validate(value, from_attributes=True)  # as FastAPI does
    except ValidationError as e:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in e.errors()]
        raise RequestValidationError(errors, body=value) from None


@router.post(
    "/{model_id}/predict.csv",
    tags=MODELS,
    response_class=StreamingResponse,
    summary="Batch prediction: CSV in, CSV (or JSON lines) streamed back",
    description=(
        "Send a CSV whose header names the dataset's feature columns (any order; other columns "
        "such as the target are ignored). The answer streams back in chunks, one output row per "
        "input row in the same order: for classification `prediction` (the label) and one "
        "`p_<class>` probability per class; for regression one column per target. Send "
        '`Accept: application/x-ndjson` for JSON lines `{"outputs": [...], "prediction"}`.'
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n"
                    "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n",
                }
            },
        }
    },
    responses={
        200: {
            "content": {
                "text/csv": {"example": "prediction,p_setosa,p_versicolor,p_virginica\n"},
                batch.NDJSON: {},
            }
        },
        **UNAUTHORIZED,
        404: {"model": ErrorResponse, "description": "No such model (or not yours)."},
        413: {
            "model": ErrorResponse,
            "description": "Over FITSERVE_MAX_BODY_BYTES or FITSERVE_MAX_PREDICT_ROWS.",
        },
        415: {"model": ErrorResponse, "description": "A multipart form instead of CSV text."},
        422: {
            "model": ErrorResponse,
            "description": "A missing or repeated column, a bad cell, or a non-finite output.",
        },
    },
)
async def predict_csv(
    model_id: ModelRef,
    request: Request,
    owner: OwnerDep,
    cache: ModelCacheDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise Unsupported(
            "send the CSV itself as the body (curl --data-binary @in.csv -H 'Content-Type: "
            "text/csv'), not a multipart form"
        )
    model = await prediction.get_model_async(
        request.app.state.sessionmaker, cache=cache, owner=owner, model_id=model_id
    )
    max_rows = request.app.state.settings.max_predict_rows
    x: np.ndarray | TokenLists
    if model.predictor.takes_tokens:
        try:
            text = (await request.body()).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Unprocessable("the CSV must be UTF-8 text", loc=("body",)) from None
        x = await run_in_threadpool(batch.parse_token_lines, text, model, max_rows=max_rows)
    else:
        # parsed in a thread block by block as the body arrives (Arrow), counted against the
        # row limit as it goes: a body past it is refused without the rest being read
        body = RequestBody(request, ahead=2 * batch.BLOCK_BYTES)
        parse = functools.partial(batch.parse_csv, body, model.feature_names, max_rows=max_rows)
        x = await anyio.to_thread.run_sync(parse, limiter=request.app.state.csv_parsers)
    batch.check_width(model, x)
    outputs = await run_in_threadpool(batch.predict_all, model, x)
    ndjson = accept is not None and batch.NDJSON in accept
    return StreamingResponse(
        batch.stream_predictions(model, outputs, ndjson=ndjson),
        media_type=batch.NDJSON if ndjson else "text/csv; charset=utf-8",
    )


@router.get(
    "/{model_id}/keras",
    tags=INTEROP,
    summary="The model's network as Keras Sequential JSON (architecture only, as to_json())",
    responses=_ERRORS,
)
def model_keras(model_id: ModelRef, session: SessionDep, owner: OwnerDep) -> dict[str, Any]:
    return service.get_keras_config(session, owner=owner, model_id=model_id)


@router.get(
    "/{model_id}/onnx",
    tags=INTEROP,
    summary="The trained model as ONNX: standardization, network and final activation in one "
    "graph; input 'input' [batch, n_features] float32, output 'output'",
    response_class=Response,
    responses={
        **_ERRORS,
        200: {
            "content": {"application/onnx": {"schema": {"type": "string", "format": "binary"}}},
            "description": "ONNX model bytes (opset 17); onnxruntime returns /predict's outputs.",
        },
    },
)
def model_onnx(model_id: ModelRef, session: SessionDep, owner: OwnerDep) -> Response:
    return Response(
        content=service.get_onnx(session, owner=owner, model_id=model_id),
        media_type="application/onnx",
        # model ids are hex, so the file name carries no user text
        headers={"Content-Disposition": f'attachment; filename="model-{model_id}.onnx"'},
    )


@router.delete(
    "/{model_id}",
    status_code=204,
    summary="Delete a model with its weights, its job's checkpoint and its versions under names",
    responses={
        **_ERRORS,
        409: {"model": ErrorResponse, "description": "An alias points at it."},
    },
)
def delete_model(
    model_id: ModelRef, request: Request, session: SessionDep, owner: OwnerDep
) -> Response:
    cache = request.app.state.model_cache
    service.delete_model(session, owner=owner, model_id=model_id, cache=cache)
    return Response(status_code=204)
