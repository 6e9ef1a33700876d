"""POST /v1/models/{id}/predict.csv: batch prediction, a CSV in and a CSV (or JSON lines) streamed
back in chunks, in the input's row order.

The whole input is parsed and checked before the first byte goes back, so a bad cell is a clear
422 rather than a response cut short; the body limit (FITSERVE_MAX_BODY_BYTES) bounds it. The
output is computed and sent chunk by chunk, so memory holds the inputs and one chunk of outputs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

import models
from app.auth import OwnerDep
from app.errors import NotFound, Unprocessable, Unsupported
from app.metrics import observe_prediction
from app.schemas import UNAUTHORIZED, ErrorResponse
from app.services.models import find_model
from app.tables import Dataset, Model

# Rows per forward pass and per streamed chunk: big enough to amortize the call, small enough
# that the first rows arrive at once.
CHUNK_ROWS = 1024
NDJSON = "application/x-ndjson"

router = APIRouter(prefix="/v1/models", tags=["models"])


@dataclass(frozen=True)
class BatchInput:
    """What batch prediction needs from a model row and its dataset."""

    model_id: str
    weights: bytes
    task: str
    classes: list[Any]
    feature_names: list[str]
    target_names: list[str]

    @classmethod
    def from_rows(cls, row: Model, dataset: Dataset | None) -> BatchInput:
        return cls(
            model_id=row.id,
            weights=row.weights,
            task=row.task,
            classes=list(row.classes or []),
            feature_names=list(dataset.feature_names) if dataset is not None else [],
            target_names=list(dataset.target_names) if dataset is not None else [],
        )


def _load(make_session: Any, *, owner: str | None, model_id: str) -> BatchInput:
    with make_session() as session:
        row = find_model(session, owner=owner, model_id=model_id, weights=True)
        if row is None:
            raise NotFound(f"model {model_id!r} not found; a succeeded job's model_id names one")
        return BatchInput.from_rows(row, session.get(Dataset, row.dataset_id))


def parse_csv(text: str, feature_names: list[str]) -> np.ndarray:
    """(rows, n_features) float32 from a CSV whose header names the features (any order; other
    columns, such as the target, are ignored)."""
    reader = csv.reader(io.StringIO(text))
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in feature_names if name not in header]
    if not header or missing:
        raise Unprocessable(
            f"the CSV header lacks {', '.join(map(repr, missing))}; its first row must name the "
            f"model's input columns: {','.join(feature_names)} (other columns are ignored)",
            loc=("body", "header"),
        )
    index = [header.index(name) for name in feature_names]
    rows: list[list[float]] = []
    for line, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise Unprocessable(
                f"line {line} has {len(cells)} cells, the header has {len(header)}",
                loc=("body", line),
            )
        values = []
        for i in index:
            try:
                value = float(cells[i])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise Unprocessable(
                    f"line {line}, column {header[i]!r}: {cells[i]!r} is not a finite number",
                    loc=("body", line, header[i]),
                )
            values.append(value)
        rows.append(values)
    if not rows:
        raise Unprocessable("the CSV has a header but no rows to predict", loc=("body",))
    return np.asarray(rows, dtype=np.float32)


def _columns(batch: BatchInput, n_outputs: int) -> tuple[list[str], bool]:
    """Output column names, and whether a `prediction` label column leads them."""
    if batch.task == "classification" and batch.classes:
        if n_outputs == 1:  # sigmoid: the probability of the second (positive) class
            return ["prediction", f"p_{batch.classes[-1]}"], True
        return ["prediction", *(f"p_{c}" for c in batch.classes)], True
    if len(batch.target_names) == n_outputs:
        return list(batch.target_names), False
    return [f"output_{i}" for i in range(n_outputs)], False


def _labels(batch: BatchInput, outputs: np.ndarray) -> list[Any]:
    if outputs.shape[1] == 1:
        return [batch.classes[int(p >= 0.5)] for p in outputs[:, 0]]
    return [batch.classes[i] for i in outputs.argmax(axis=1)]


def stream_predictions(
    predictor: Any, batch: BatchInput, x: np.ndarray, *, ndjson: bool
) -> Iterator[str]:
    header_sent = False
    for start in range(0, len(x), CHUNK_ROWS):
        with observe_prediction():
            outputs = np.asarray(predictor.predict(x[start : start + CHUNK_ROWS]))
        outputs = outputs.reshape(len(outputs), -1)
        columns, labelled = _columns(batch, outputs.shape[1])
        labels = _labels(batch, outputs) if labelled else [None] * len(outputs)
        out = io.StringIO()
        if ndjson:
            for label, values in zip(labels, outputs.tolist(), strict=True):
                record: dict[str, Any] = {"outputs": values}
                if labelled:
                    record["prediction"] = label
                out.write(json.dumps(record) + "\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            if not header_sent:
                writer.writerow(columns)
                header_sent = True
            for label, row in zip(labels, outputs, strict=True):
                numbers = [format(float(v), ".9g") for v in row]  # float32 round-trips in 9 digits
                writer.writerow([label, *numbers] if labelled else numbers)
        yield out.getvalue()


@router.post(
    "/{model_id}/predict.csv",
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
                NDJSON: {},
            }
        },
        **UNAUTHORIZED,
        404: {"model": ErrorResponse, "description": "No such model (or not yours)."},
        413: {"model": ErrorResponse, "description": "Body over FITSERVE_MAX_BODY_BYTES."},
        415: {"model": ErrorResponse, "description": "A multipart form instead of CSV text."},
        422: {"model": ErrorResponse, "description": "A missing column or a bad cell."},
    },
)
async def predict_csv(
    model_id: str,
    request: Request,
    owner: OwnerDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> StreamingResponse:
    if request.headers.get("content-type", "").startswith("multipart/"):
        raise Unsupported(
            "send the CSV itself as the body (curl --data-binary @in.csv -H 'Content-Type: "
            "text/csv'), not a multipart form"
        )
    batch = await run_in_threadpool(
        _load, request.app.state.sessionmaker, owner=owner, model_id=model_id
    )
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Unprocessable("the CSV must be UTF-8 text", loc=("body",)) from None
    x = await run_in_threadpool(parse_csv, text, batch.feature_names)
    predictor = await run_in_threadpool(
        request.app.state.model_cache.get, batch.model_id, lambda: models.Predictor(batch.weights)
    )
    if x.shape[1] != predictor.n_features:
        raise Unprocessable(
            f"the model takes {predictor.n_features} inputs, the CSV gave {x.shape[1]}",
            loc=("body",),
        )
    ndjson = accept is not None and NDJSON in accept
    return StreamingResponse(
        stream_predictions(predictor, batch, x, ndjson=ndjson),
        media_type=NDJSON if ndjson else "text/csv; charset=utf-8",
    )
